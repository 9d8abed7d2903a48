"""mmcv-lite ships `mmcv/ops/*.py` but not the compiled `mmcv._ext`, so
`import mmcv.ops` fails, and mmseg imports it at module level (e.g.
mmseg/utils/mask_classification.py: `from mmcv.ops import point_sample`).
TerraTorch imports `mmseg.models.decode_heads` when `terratorch.registry` is
imported (mmseg_registry.py), so the stand-in must be installed BEFORE
importing terratorch. Every attribute of the stand-in is a class that raises
when instantiated/called; heads that use no mmcv op (FCNHead, UPerHead, ...)
never touch it. `mmcv.cnn.bricks.transformer` also tries
`from mmcv.ops.multi_scale_deform_attn import MultiScaleDeformableAttention`
inside a try/except ImportError, which just warns; that is fine.
"""

import sys
import types


class _MmcvOpStandIn:
    def __init__(self, *args, **kwargs):
        raise RuntimeError(
            f"{type(self).__name__} is a stand-in: compiled mmcv.ops is not available (mmcv-lite)"
        )


class _MmcvOpsModule(types.ModuleType):
    def __getattr__(self, name: str):
        if name.startswith("__"):  # keep import machinery / introspection sane
            raise AttributeError(name)
        return type(name, (_MmcvOpStandIn,), {})


def install_stand_ins() -> None:
    if "mmcv.ops" not in sys.modules:
        sys.modules["mmcv.ops"] = _MmcvOpsModule("mmcv.ops")


