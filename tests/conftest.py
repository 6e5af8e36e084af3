"""Shared fixtures: tiny random-weight ViTs, and the real assets in ../shared when present."""

from __future__ import annotations

from pathlib import Path

import pytest
import timm
import torch
from timm.models.vision_transformer import VisionTransformer

REPO = Path(__file__).resolve().parents[1]
SHARED_ASSETS = REPO.parent / "shared" / "assets"
DEIT_TINY_WEIGHTS = SHARED_ASSETS / "weights" / "deit_tiny_patch16_224.pth"
SAMPLE_IMAGES = SHARED_ASSETS / "imagenet-sample"


def require_assets(*paths: Path) -> None:
    """Skip the calling test, saying which file of ../shared/assets is missing."""
    for path in paths:
        if not path.exists():
            pytest.skip(f"needs {path} (the real data in ../shared/assets), which is absent on this machine")


def randomize(model: torch.nn.Module, seed: int = 0, gain: float = 1.5) -> torch.nn.Module:
    """Re-draw every weight with larger variance than timm's init so that attention is peaked
    and class importance scores vary a lot between tokens (timm's std 0.02 makes them uniform)."""
    g = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for name, p in model.named_parameters():
            if p.dim() >= 2:
                fan_in = p[0].numel()
                p.copy_(torch.randn(p.shape, generator=g) * gain / fan_in**0.5)
            elif name.endswith("weight"):  # norms, LayerScale gammas
                p.copy_(1.0 + 0.2 * torch.randn(p.shape, generator=g))
            else:
                p.copy_(0.1 * torch.randn(p.shape, generator=g))
    return model.eval()


def tiny_vit(**kwargs) -> VisionTransformer:
    """A small ViT (65 tokens) with random weights; kwargs override the architecture."""
    cfg = dict(img_size=64, patch_size=8, embed_dim=96, depth=6, num_heads=3, num_classes=10)
    cfg.update(kwargs)
    return randomize(VisionTransformer(**cfg), seed=kwargs.get("depth", 6))


def _cpu_autocast_supports(dtype: torch.dtype) -> bool:
    import warnings

    try:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            with torch.autocast("cpu", dtype=dtype):
                return True
    except RuntimeError:  # torch 2.1: "AutocastCPU only support Bfloat16"
        return False


# autocast dtypes for CPU tests; fp16 is skipped, saying why, where torch's CPU autocast lacks it (torch 2.1)
CPU_AUTOCAST_DTYPES = [
    pytest.param(
        dtype,
        id=str(dtype),
        marks=pytest.mark.skipif(
            not _cpu_autocast_supports(dtype),
            reason=f"torch {torch.__version__}'s CPU autocast does not support {dtype} (bfloat16 only)",
        ),
    )
    for dtype in (torch.float16, torch.bfloat16)
]


MODEL_FACTORIES = {
    "deit_tiny": lambda: randomize(timm.create_model("deit_tiny_patch16_224", num_classes=100), 1),
    "deit_small": lambda: randomize(timm.create_model("deit_small_patch16_224", num_classes=100), 2),
    "deit_tiny_distilled": lambda: randomize(
        timm.create_model("deit_tiny_distilled_patch16_224", num_classes=100), 3
    ),
    "vit_layerscale_qknorm": lambda: tiny_vit(init_values=0.5, qk_norm=True),
}


@pytest.fixture(scope="module")
def data(tmp_path_factory):
    """22 tiny images in 5 shards (the last one short), and a random-weight DeiT-Tiny checkpoint dir
    (``ckpt/deit_tiny_patch16_224.pth``): the sweep tests' data (modules may define their own)."""
    from shards_testing import tiny_dataset, write_tiny_shards

    root = tmp_path_factory.mktemp("sweep")
    write_tiny_shards(root, tiny_dataset(n_images=22, n_classes=4), shard_size=5)
    ckpt = root / "ckpt"
    ckpt.mkdir()
    torch.manual_seed(0)
    torch.save(
        {"model": timm.create_model("deit_tiny_patch16_224").state_dict()}, ckpt / "deit_tiny_patch16_224.pth"
    )
    return root


@pytest.fixture(autouse=True)
def method_registry_of_the_test():
    """Each test starts with the methods loaded before it (``tomecis.names.REGISTRY``) and leaves none it
    loaded behind: a process holds one method per name, so a method one test loads from a temp package
    would otherwise clash with the same name another test loads from elsewhere."""
    from tomecis.names import REGISTRY

    methods, refs = dict(REGISTRY.methods), dict(REGISTRY.refs)
    yield
    REGISTRY.methods.clear()
    REGISTRY.methods.update(methods)
    REGISTRY.refs.clear()
    REGISTRY.refs.update(refs)


@pytest.fixture(scope="module")
def deit_tiny_real():
    """The real DeiT-Tiny (``../shared/assets``) in eval mode, one per test module; skips when absent."""
    import timm

    require_assets(DEIT_TINY_WEIGHTS)
    model = timm.create_model("deit_tiny_patch16_224")
    model.load_state_dict(torch.load(DEIT_TINY_WEIGHTS, map_location="cpu")["model"], strict=True)
    return model.eval()


@pytest.fixture(scope="session")
def sample_photos():
    """The 500 real ImageNet photos, decoded once with DeiT's eval transform: (images, labels)."""
    require_assets(SAMPLE_IMAGES, SHARED_ASSETS / "synset_words.txt")
    from PIL import Image
    from timm.data import create_transform, resolve_data_config

    synsets = [
        line.split()[0]
        for line in (SHARED_ASSETS / "synset_words.txt").read_text().splitlines()
        if line.strip()
    ]
    index = {s: i for i, s in enumerate(synsets)}
    transform = create_transform(**resolve_data_config({}, model=timm.create_model("deit_tiny_patch16_224")))
    images, labels = [], []
    for path in sorted(SAMPLE_IMAGES.glob("*/*")):
        with Image.open(path) as img:
            images.append(transform(img.convert("RGB")))
        labels.append(index[path.parent.name])
    return torch.stack(images), torch.tensor(labels)


@pytest.fixture
def actor_dies_on_item(monkeypatch, tmp_path):
    """``actor_dies_on_item(n)``: the sweep's actors become a subclass of the evaluator of which exactly
    one process dies (``os._exit``, like a crashed or preempted worker) when it starts its n-th work item.
    A marker file, created atomically, makes it one death in all: replacement actors live.

    It dies only once the driver holds every result it made before (a marker per result the driver
    fetched): a process that exits at once can take the reply of its previous item with it, which would
    make that item a retry too, as it may on a real cluster; the tests count retries exactly."""
    import hashlib
    import os
    import time

    from orchestrator import evaluator, pool

    marker = tmp_path / "an-actor-died"
    received = tmp_path / "results-the-driver-holds"
    received.mkdir()

    def name(urls) -> str:
        return hashlib.sha1("|".join(urls).encode()).hexdigest()

    real_fetch = pool.fetch

    def fetch_and_note(ref):
        outcome = real_fetch(ref)
        (received / name(outcome.shards)).touch()
        return outcome

    def arm(n: int) -> None:
        class DyingEvaluator(evaluator.Evaluator):
            def evaluate(self, decode_pass, items):
                if self.items_started + 1 == n and not marker.exists():
                    made = [name(urls) for urls in getattr(self, "made", [])]
                    deadline = time.monotonic() + 300
                    while not all((received / m).exists() for m in made) and time.monotonic() < deadline:
                        time.sleep(0.01)  # the driver is fetching them: a wait for that, not a guess
                    try:
                        os.close(os.open(marker, os.O_CREAT | os.O_EXCL))
                        os._exit(17)
                    except FileExistsError:
                        pass
                outcome = super().evaluate(decode_pass, items)
                self.made = [*getattr(self, "made", []), [s.url for s in items]]
                return outcome

        monkeypatch.setattr(pool, "Evaluator", DyingEvaluator)
        monkeypatch.setattr(pool, "fetch", fetch_and_note)

    return arm
