"""RecBole's ``TransformerEncoder`` read at one position per row, with its last layer computed there only.

A model that reads an encoder's output at one position per row (M3BSR's experts: the last
position of a behavior, or the last real position) throws the other positions of the last layer
away. That layer's attention queries, output projection, feed-forward layer and LayerNorms work
position by position, so the read position alone gives the same output; only the keys and values
need every position. At M3BSR's window of 20 this skips 19/20 of the last layer's per-position work
but the keys and values (``benchmarks/m3bsr_fast_paths.py`` times the model with and without it).

Dropout: in training every dropout mask is drawn whole, as RecBole's layers draw it, and the read
position's elements are taken from it (:func:`mbrec.layers.dropout.selected_dropout`), so seeded
runs keep their random streams. The modules are RecBole's (``recbole.model.layers``), read through
their attribute names; nothing here imports RecBole.
"""

import torch

from mbrec.layers.dropout import selected_dropout


def encoder_output_at(encoder, hidden, attention_mask, read_positions):
    """``encoder(hidden, attention_mask)[-1][rows, read_positions]``: ``[B, D]``.

    Args:
        encoder: a RecBole ``TransformerEncoder``.
        hidden: ``[B, L, D]`` input tokens.
        attention_mask: ``[B, 1, L, L]`` additive mask (RecBole's extended attention mask).
        read_positions: ``[B]`` the position read in each row.
    """
    for layer in encoder.layer[:-1]:
        hidden = layer(hidden, attention_mask)
    return layer_output_at(encoder.layer[-1], hidden, attention_mask, read_positions)


def layer_output_at(layer, hidden, attention_mask, read_positions):
    """A RecBole ``TransformerLayer``'s output at ``read_positions`` only: ``[B, D]`` (see the module doc)."""
    attention, feed_forward = layer.multi_head_attention, layer.feed_forward
    batch, length, width = hidden.shape
    heads, head_size = attention.num_attention_heads, attention.attention_head_size
    rows = torch.arange(batch, device=hidden.device)

    def at_read_position(full):  # [B, L, ...] -> [B, ...]
        return full[rows, read_positions]

    read_hidden = at_read_position(hidden)  # [B, D]
    query = attention.query(read_hidden).view(batch, heads, 1, head_size)
    key = attention.key(hidden).view(batch, length, heads, head_size).permute(0, 2, 3, 1)  # [B, h, d, L]
    value = attention.value(hidden).view(batch, length, heads, head_size).permute(0, 2, 1, 3)  # [B, h, L, d]
    scores = torch.matmul(query, key) / attention.sqrt_attention_head_size  # [B, h, 1, L]
    mask_rows = attention_mask.expand(batch, -1, length, length)[rows, :, read_positions]  # [B, 1, L]
    probs = attention.softmax(scores + mask_rows.unsqueeze(2))
    probs = selected_dropout(probs, attention.attn_dropout, (batch, heads, length, length),
                             lambda mask: mask[rows, :, read_positions].unsqueeze(2))  # [B, h, 1, L]
    context = torch.matmul(probs, value).view(batch, width)  # [B, h, 1, d] -> [B, D]: heads in order
    attended = selected_dropout(attention.dense(context), attention.out_dropout, (batch, length, width),
                                at_read_position)
    attended = attention.LayerNorm(attended + read_hidden)
    inner = feed_forward.intermediate_act_fn(feed_forward.dense_1(attended))
    output = selected_dropout(feed_forward.dense_2(inner), feed_forward.dropout, (batch, length, width),
                              at_read_position)
    return feed_forward.LayerNorm(output + attended)
