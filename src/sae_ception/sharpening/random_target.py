"""The random-target control, matched to the real targets: same centre, same distance of each target from it.

With T the reference sharpener's targets [N, D] (`sharpening.reference`, default per_class), mu their mean over
the training examples and g_i iid standard normal vectors drawn from the generator:

    target_i = mu + g_i * ||T_i - mu|| / ||g_i||

so each target keeps the real target's offset from the centre (its norm) but points in a uniformly random
direction around it. Its starting cosine loss is much closer to the real targets' than that of a random unit
vector (`random_unit`, near 1 when activations share a large common component), but not equal: a real target's
offset points along its own example's activation and a random one does not (on `experiment=smoke`: 0.23 against
0.07). The auxiliary stage records every run's starting loss (`objective_start`), so the gap is always shown.
mu is the centre of the distribution; the sample mean of the random targets is within about
max ||T_i - mu|| / sqrt(N) of it.
"""

import torch

from sae_ception.sharpening.base import SHARPENERS
from sae_ception.sharpening.reference import ReferencedSharpener


@SHARPENERS.register("random")
class RandomTargetSharpener(ReferencedSharpener):
    @torch.no_grad()
    def make_targets(self, sae, acts_ND, labels_N, generator, batch_size: int = 4096) -> torch.Tensor:
        """mu + g_i ||T_i - mu|| / ||g_i|| per example. [N, D], raw space, deterministic given `generator`."""
        reference_ND = self.reference_targets(sae, acts_ND, labels_N, generator, batch_size)
        mu_D = reference_ND.mean(dim=0, dtype=torch.float64).to(reference_ND.dtype)
        radius_N = torch.cat([(chunk - mu_D).norm(dim=-1) for chunk in reference_ND.split(batch_size)])
        targets_ND = torch.randn(reference_ND.shape, generator=generator, dtype=reference_ND.dtype)
        targets_ND *= (radius_N / targets_ND.norm(dim=-1).clamp_min(1e-12))[:, None]
        return targets_ND.add_(mu_D)
