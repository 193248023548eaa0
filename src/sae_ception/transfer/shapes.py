"""Config-time checks of the methods that need models of given shapes: refused in one line, before training."""

from sae_ception.errors import ConfigError


def require_mlp(method: str, cfg, why: str) -> None:
    """Surgery reads Linear layers: both models must be MLPs (model=mlp, mlp_mega, ...)."""
    if cfg.model_a.name != "mlp":
        raise ConfigError(f"transfer.{method}: {why} edits the Linear layers of MLP classifiers, but "
                          f"model_a.name={cfg.model_a.name}; use MLP models (model@model_a=mlp_mega) or drop this "
                          "method from concept.methods")


def require_same_last_width(method: str, cfg, why: str) -> None:
    """A's and B's last hidden layers must have equal widths (a row of B's head, a map between their features)."""
    require_mlp(method, cfg, why)
    width_a, width_b = cfg.model_a.hidden_sizes[-1], cfg.model_b.hidden_sizes[-1]
    if width_a != width_b:
        raise ConfigError(f"transfer.{method}: {why} needs A's and B's last hidden layers of equal width, but "
                          f"model_a.hidden_sizes={list(cfg.model_a.hidden_sizes)} ends in {width_a} and "
                          f"model_b.hidden_sizes={list(cfg.model_b.hidden_sizes)} in {width_b}; use one "
                          "architecture for both, or drop this method from concept.methods")


def require_same_architecture(method: str, cfg, why: str) -> None:
    """Every hidden layer of equal width (units are transplanted position by position)."""
    require_mlp(method, cfg, why)
    sizes_a, sizes_b = list(cfg.model_a.hidden_sizes), list(cfg.model_b.hidden_sizes)
    if sizes_a != sizes_b:
        raise ConfigError(f"transfer.{method}: {why} needs A and B of one architecture, but "
                          f"model_a.hidden_sizes={sizes_a} and model_b.hidden_sizes={sizes_b}; use one architecture "
                          "for both, or drop this method from concept.methods")
