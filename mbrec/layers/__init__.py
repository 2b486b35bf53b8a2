"""Building blocks shared by several models (see the README's Architecture section).

Imports: torch and each other only.
"""

from torch import nn


def bert_init(module, std):
    """BERT4Rec's initialisation, for ``model.apply``: N(0, std) weights of Linear and Embedding
    layers (an embedding's padding row zero), zero Linear biases, unit LayerNorm."""
    if isinstance(module, (nn.Linear, nn.Embedding)):
        module.weight.data.normal_(mean=0.0, std=std)
        if isinstance(module, nn.Embedding) and module.padding_idx is not None:
            module.weight.data[module.padding_idx].zero_()
    if isinstance(module, nn.Linear) and module.bias is not None:
        module.bias.data.zero_()
    elif isinstance(module, nn.LayerNorm):
        module.weight.data.fill_(1.0)
        module.bias.data.zero_()
