"""The modern CFG family as diffusers' guiders compute it, for the fixture scripts:
APG through `diffusers.guiders.adaptive_projected_guidance.normalized_guidance` with
its `MomentumBuffer`, CFG-Zero* through `cfg_zero_star_scale` and the zero-init rule
of `ClassifierFreeZeroStarGuidance.forward`. Per sample (each sample has its own
scale and momentum buffer), on the unconditional and conditional model outputs of
one step; the caller applies `rescale_noise_cfg` afterwards as the guiders do
(except on a zero-initialised step, whose all-zero prediction has no std to rescale).
"""
import torch
from diffusers.guiders.adaptive_projected_guidance import MomentumBuffer, normalized_guidance
from diffusers.guiders.classifier_free_zero_star_guidance import cfg_zero_star_scale


class Guider:
    """kind: "cfg", "apg" or "cfg_zero_star"; settings as in the fixture metadata."""

    def __init__(self, kind, batch, apg_eta=1.0, apg_norm_threshold=15.0, apg_momentum=0.0, zero_init_steps=1):
        self.kind = kind
        self.eta = apg_eta
        self.threshold = apg_norm_threshold
        self.zero_init_steps = zero_init_steps
        # One buffer per sample, made at step 0 as the guider does; momentum 0 is
        # diffusers' None (no averaging).
        self.buffers = [MomentumBuffer(apg_momentum) if apg_momentum != 0 else None for _ in range(batch)]

    def zeroes(self, step):
        return self.kind == "cfg_zero_star" and step < self.zero_init_steps

    def __call__(self, step, use_cfg, unc, con, scales):
        """The guided prediction of every sample at `step` ([B, C, H, W])."""
        if self.zeroes(step):
            return torch.zeros_like(con)
        if not use_cfg:
            return con
        out = []
        for b in range(con.shape[0]):
            u, c, s = unc[b:b + 1], con[b:b + 1], float(scales[b])
            if self.kind == "cfg":
                out.append(u + s * (c - u))
            elif self.kind == "apg":
                out.append(normalized_guidance(c, u, s, self.buffers[b], self.eta, self.threshold))
            elif self.kind == "cfg_zero_star":
                alpha = cfg_zero_star_scale(c.flatten(1), u.flatten(1)).view(-1, 1, 1, 1)
                u = u * alpha
                out.append(u + s * (c - u))
            else:
                raise ValueError(self.kind)
        return torch.cat(out)

    def metadata(self):
        m = {"guider": self.kind}
        if self.kind == "apg":
            m.update(apg_eta=repr(float(self.eta)), apg_norm_threshold=repr(float(self.threshold)),
                     apg_momentum=repr(float(self.buffers[0].momentum if self.buffers[0] else 0.0)))
        if self.kind == "cfg_zero_star":
            m["zero_init_steps"] = str(self.zero_init_steps)
        return m
