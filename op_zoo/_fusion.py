"""Export-time fusion of re-parameterisable (multi-branch) modules."""
from __future__ import annotations

from torch import nn


class Reparameterizable(nn.Module):
    """Base class of modules trained with several branches and exported as one.

    Subclasses implement ``fuse()``, returning a new plain module that computes the same
    function as ``self`` in eval mode.
    """

    def fuse(self) -> nn.Module:
        """Return the single-branch module equivalent to ``self`` in eval mode."""
        raise NotImplementedError


def _fuse_children(module: nn.Module) -> None:
    for name, child in list(module.named_children()):
        if isinstance(child, Reparameterizable):
            setattr(module, name, child.fuse())
        elif callable(getattr(child, "reparameterize", None)):
            child.reparameterize()  # timm's convention (RepVGG, MobileOne): fuses in place
        else:
            _fuse_children(child)


def fuse_for_export(model: nn.Module) -> nn.Module:
    """Fuse every re-parameterisable module of ``model`` in place.

    Our ``Reparameterizable`` modules are replaced by the result of their ``fuse()``;
    modules following timm's convention (a ``reparameterize()`` method) are fused in place.

    Args:
        model: the model (or one candidate) to prepare for export.

    Returns:
        ``model`` itself, or the fused module when ``model`` is itself re-parameterisable.
    """
    if isinstance(model, Reparameterizable):
        return model.fuse()
    if callable(getattr(model, "reparameterize", None)):
        model.reparameterize()
        return model
    _fuse_children(model)
    return model
