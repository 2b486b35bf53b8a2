"""Mixture of experts with shared experts and task-private experts under hard task routing.

Customized Gate Control (CGC; Tang et al., "Progressive Layered Extraction", RecSys 2020) as FatsMB
uses it for behaviors (Yang et al., KDD'26, Eq. 18-20): every sample names a task (here: a target
behavior). Its output is a softmax-gated sum over the ``n_shared`` shared experts and the
``n_private`` experts private to that task (the task is a hard router: other tasks' private
experts are never evaluated for it). Task 0 is the null task (classifier-free guidance drops the
behavior): it has no private experts, only the shared ones (Eq. 20). Each task has its own gate,
as in CGC (the paper's Eq. 18 writes a single ``W_g``; its code keeps one gate per behavior).
"""

import torch
from torch import nn

NULL_TASK = 0


def put_expert_rows(output, selected, rows, leading_shape):
    """``output[selected] = rows``, creating ``output [*leading_shape, D]`` from the first expert's ``rows``.

    The output takes the experts' dtype, not the input's: under ``torch.autocast`` (bf16 training)
    the experts' linear layers return bf16 while the input may be fp32 (e.g. a LayerNorm output),
    and a dense layer in the same place would return bf16 too. In fp32 both dtypes agree.
    """
    if output is None:
        output = rows.new_zeros(*leading_shape, rows.size(-1))
    output[selected] = rows
    return output


class TaskRoutedMoE(nn.Module):
    """``[N, D]`` inputs with task ids ``[N]`` (0 = null, 1..n_tasks) -> ``[N, D]``; each expert is ``Linear(D, D)``."""

    def __init__(self, dim, n_tasks, n_shared, n_private):
        super().__init__()
        if n_shared < 1:
            raise ValueError("the null task needs at least one shared expert")
        self.n_tasks = n_tasks
        self.n_shared = n_shared
        self.n_private = n_private
        self.shared_experts = nn.ModuleList(nn.Linear(dim, dim) for _ in range(n_shared))
        # private_experts[task - 1][j]: the j-th private expert of task ``task``
        self.private_experts = nn.ModuleList(
            nn.ModuleList(nn.Linear(dim, dim) for _ in range(n_private)) for _ in range(n_tasks))
        self.null_gate = nn.Linear(dim, n_shared, bias=False)
        self.task_gates = nn.ModuleList(nn.Linear(dim, n_shared + n_private, bias=False) for _ in range(n_tasks))

    def forward(self, x, task):
        unknown = (task < 0) | (task > self.n_tasks)
        if unknown.any():
            raise ValueError(f"task ids must lie in 0..{self.n_tasks}, got {task[unknown].unique().tolist()}")
        shared = torch.stack([expert(x) for expert in self.shared_experts], dim=1)  # [N, n_shared, D]
        output = None
        null = task == NULL_TASK
        if null.any():  # Eq. 20: shared experts only
            weights = torch.softmax(self.null_gate(x[null]), dim=-1)  # [n, n_shared]
            output = put_expert_rows(output, null, (weights.unsqueeze(-1) * shared[null]).sum(dim=1), x.shape[:-1])
        for task_id in range(1, self.n_tasks + 1):
            selected = task == task_id
            if not selected.any():
                continue
            inputs = x[selected]
            private = [expert(inputs) for expert in self.private_experts[task_id - 1]]
            experts = torch.cat([shared[selected], *(out.unsqueeze(1) for out in private)], dim=1)  # [n, E, D]
            weights = torch.softmax(self.task_gates[task_id - 1](inputs), dim=-1)  # Eq. 18: [n, E]
            output = put_expert_rows(output, selected, (weights.unsqueeze(-1) * experts).sum(dim=1),  # Eq. 19
                                     x.shape[:-1])
        return torch.zeros_like(x) if output is None else output  # None: no rows at all


class PositionRoutedFFN(nn.Module):
    """Feed-forward experts chosen by a given route per token, no learned router.

    MBGen's position-routed sparse FFN (Liu et al., "Multi-Behavior Generative Recommendation",
    Section 3.3): in the decoder, the expert of a token is fixed by the slot it generates (BOS ->
    the behavior expert, behavior -> the first-digit expert, ...), so each expert specialises in
    one token type and none can collapse, as learned gates may. ``experts`` are modules called
    as ``expert(x, behavior_vectors)`` (e.g. :class:`mbrec.layers.seq2seq.FeedForward`); each
    token goes through exactly one of them.
    """

    def __init__(self, experts):
        super().__init__()
        self.experts = nn.ModuleList(experts)

    def forward(self, x, behavior_vectors=None, routes=None):
        """``x [B, S, D_in]``, ``routes [B, S]`` or ``[S]`` expert ids -> ``[B, S, D]``."""
        if routes is None:
            raise ValueError("PositionRoutedFFN needs a route (expert id) for every token")
        routes = routes.expand(x.shape[:-1]) if routes.dim() == 1 else routes  # [B, S]
        if routes.min() < 0 or routes.max() >= len(self.experts):
            raise ValueError(f"routes must lie in 0..{len(self.experts) - 1}, got {routes.unique().tolist()}")
        output = None
        for expert_id, expert in enumerate(self.experts):
            selected = routes == expert_id  # [B, S]
            if not selected.any():
                continue
            vectors = None if behavior_vectors is None else behavior_vectors[selected]
            output = put_expert_rows(output, selected, expert(x[selected], vectors), x.shape[:-1])  # [B, S, D]
        return output

class BehaviorConditionedRouter(nn.Module):
    """Softmax weights over ``n_experts`` interest vectors, conditioned on the target behavior (M3BSR).

    Logits are a linear function of ``[summary; behavior embedding]`` (the user's shared interest
    and the asked behavior, 0 = told nothing, a learned "unknown" row); experts marked
    unavailable (``available`` False, e.g. a behavior absent from the window) get weight 0. At
    least one expert of every row must be available (M3BSR's shared experts always are).
    """

    def __init__(self, dim, n_behaviors, n_experts):
        super().__init__()
        self.behavior = nn.Embedding(n_behaviors, dim)
        self.logits = nn.Linear(2 * dim, n_experts)

    def forward(self, summary, behavior, available=None):
        logits = self.logits(torch.cat([summary, self.behavior(behavior)], dim=-1))  # [N, E]
        if available is not None:
            if not available.any(dim=-1).all():
                raise ValueError("every row needs at least one available expert")
            logits = logits.masked_fill(~available, float("-inf"))
        return torch.softmax(logits, dim=-1)
