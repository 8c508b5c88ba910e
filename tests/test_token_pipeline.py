"""A vision transformer through lana.accelerate: token blocks found, distilled, scored,
timed, selected, fine-tuned and exported like conv blocks."""
from __future__ import annotations

import torch
from timm.models.vision_transformer import VisionTransformer
from torch.utils.data import TensorDataset

import lana

FAST = {
    "ops": {"include": ["identity", "attn_heads50", "mlp_keep25", "token_pool"]},
    "distill": {"max_steps": 3},
    "score": {"val_images": 32},
    "latency": {"batch_size": 8, "warmup": 1, "repeats": 3, "threads": 1, "time_cap_s": 0.3, "context_rounds": 1},
    "finetune": {"epochs": 0.5},
    "export": {"check_images": 8, "formats": ["torchscript"]},  # .pt2 of token candidates: tests/test_token_ops.py
    "data": {"batch_size": 32},
}


def _data(n: int, seed: int) -> TensorDataset:
    gen = torch.Generator().manual_seed(seed)
    return TensorDataset(torch.rand(n, 1, 16, 16, generator=gen), torch.randint(0, 10, (n,), generator=gen))


def test_vit_is_accelerated_block_by_block(tmp_path, one_thread):
    torch.manual_seed(0)
    teacher = VisionTransformer(img_size=16, patch_size=4, in_chans=1, embed_dim=32, depth=2, num_heads=4,
                                num_classes=10).eval()
    result = lana.accelerate(teacher, train=_data(64, 0), val=_data(32, 1), budget="70%", run_dir=tmp_path / "run",
                             device="cpu", config=FAST)
    assert set(result.selection) == {"blocks.0", "blocks.1"}
    assert result.table["latency_ms"].notna().all() and result.table["macs"].gt(0).any()
    assert set(result.table["candidate"]) == {"teacher", "identity", "attn_heads50", "mlp_keep25", "token_pool"}
    x = torch.rand(4, 1, 16, 16)
    with torch.no_grad():
        assert result.student(x).shape == (4, 10)
        reloaded = torch.jit.load(result.report["export"]["path"])
        torch.testing.assert_close(reloaded(x), result.student(x), rtol=1e-4, atol=1e-4)
