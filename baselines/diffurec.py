"""DiffuRec (Li, Sun, Li, "DiffuRec: A Diffusion Model for Sequential Recommendation", TOIS 2023).

The target embedding is diffused and reconstructed by a Transformer over the history, into which
the noised target is injected additively, ``z_i = e_i + lambda_i * (x_s + d_s)`` (DiffuRec Eq. 8;
DiffuRecSys Eq. 15). It is DiffuRecSys with cross-attention and offset noise switched off, so it
shares that implementation (:mod:`mbrec.models.diffurecsys`); this class only refuses the two
switches so that a run named DiffuRec is always DiffuRec.
"""

from mbrec.models.diffurecsys import DiffuRecSys


class DiffuRec(DiffuRecSys):
    """DiffuRecSys without its two modifications (``properties/model/DiffuRec.yaml``)."""

    def __init__(self, config, dataset):
        if config["cross_attention"] or float(config["offset_noise_scale"] or 0.0) != 0.0:
            raise ValueError("DiffuRec has neither cross-attention nor offset noise; "
                             "run DiffuRecSysV1 / DiffuRecSys for those variants")
        super().__init__(config, dataset)
