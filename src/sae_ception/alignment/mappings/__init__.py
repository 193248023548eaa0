"""Every registered mapping (importing this package registers them); one module per mapping, one YAML each in
configs/mapping/."""

from sae_ception.alignment.mappings import affine, crosscoder, mlp, procrustes  # noqa: F401
