"""Folder datasets: scanning, fixed-size targets, splits, resumable batch order, bad files."""

import warnings
from pathlib import Path

import imageio.v3 as iio
import numpy as np
import pytest
import torch
import torch.nn.functional as F

from nfit.data import (
    BatchStream,
    DataSummary,
    ImageFolder,
    batch_indices,
    collate,
    guess_channels,
    load_all,
    load_image,
    rank_slice,
    scan_folder,
    split_files,
)
from nfit.errors import ConfigError, InputError
from nfit.signals.image import write_image


def _png(path: Path, h: int, w: int, c: int = 3, seed: int = 0) -> Path:
    pixels = np.random.default_rng(seed).integers(0, 256, size=(h, w, c), dtype=np.uint8)
    path.parent.mkdir(parents=True, exist_ok=True)
    iio.imwrite(path, pixels[..., 0] if c == 1 else pixels, extension=".png")
    return path


def _garbage(path: Path) -> Path:
    path.write_bytes(b"this is not an image" * 20)
    return path


def _folder(tmp_path: Path, n: int, bad: tuple[int, ...] = ()) -> list[Path]:
    """n small RGB images of assorted shapes, those numbered in ``bad`` corrupt."""
    files = []
    for i in range(n):
        path = tmp_path / f"img{i:02d}.png"
        files.append(_garbage(path) if i in bad else _png(path, 9 + i % 3, 12 - i % 4, seed=i))
    return files


def _flat(lists) -> list[int]:
    return [x for xs in lists for x in xs]


def _recorder():
    messages = []
    return messages, messages.append


# ---------------------------------------------------------------------------- scan_folder


def test_scan_is_recursive_case_insensitive_sorted_and_skips_hidden(tmp_path):
    for rel in [
        "b/Z.PNG",
        "c.png",
        "a.jpg",
        "b/sub/c.Jpeg",
        "b/d.webp",
        ".hidden/x.png",
        "b/.y.png",
        ".git/objects/e.png",
    ]:
        (tmp_path / rel).parent.mkdir(parents=True, exist_ok=True)
        (tmp_path / rel).write_bytes(b"x")
    (tmp_path / "notes.txt").write_text("not an image")
    (tmp_path / "png").write_text("no extension")
    found = scan_folder(tmp_path)
    assert [p.relative_to(tmp_path).as_posix() for p in found] == [
        "a.jpg",
        "b/Z.PNG",
        "b/d.webp",
        "b/sub/c.Jpeg",
        "c.png",
    ]
    assert scan_folder(tmp_path, (".TXT",)) == [tmp_path / "notes.txt"]


def test_scan_errors_name_the_folder(tmp_path):
    (tmp_path / "empty" / ".hidden").mkdir(parents=True)
    _png(tmp_path / "empty" / ".hidden" / "x.png", 2, 2)
    (tmp_path / "empty" / "readme.md").write_text("hi")
    with pytest.raises(InputError, match="no image files found") as err:
        scan_folder(tmp_path / "empty")
    assert err.value.where == str(tmp_path / "empty") and ".png" in err.value.reason
    with pytest.raises(InputError, match="no such directory"):
        scan_folder(tmp_path / "missing")
    with pytest.raises(InputError, match="is a file, not a folder") as err:
        scan_folder(tmp_path / "empty" / "readme.md")
    assert err.value.where == str(tmp_path / "empty" / "readme.md")


# ---------------------------------------------------------------------------- load_image


def _resized(values: np.ndarray, size: tuple[int, int]) -> torch.Tensor:
    x = torch.from_numpy(values).permute(2, 0, 1)[None]
    x = F.interpolate(x, size=size, mode="bicubic", antialias=True, align_corners=False)
    return x[0].permute(1, 2, 0).clamp(0, 1)


def test_landscape_shorter_side_to_res_then_centre_crop(photo):
    values = iio.imread(photo).astype(np.float32) / 255  # [32, 48, 3]
    out = load_image(photo, 16, 3)
    assert out.shape == (16, 16, 3) and out.dtype == torch.float32 and out.is_contiguous()
    torch.testing.assert_close(out, _resized(values, (16, 24))[:, 4:20], rtol=0, atol=1e-6)
    # no resize needed: a pure centre crop of the original pixels
    torch.testing.assert_close(load_image(photo, 32, 3), torch.from_numpy(values[:, 8:40]), rtol=0, atol=0)


def test_portrait_and_upscaling(tmp_path, photo):
    values = iio.imread(photo).transpose(1, 0, 2).copy()  # [48, 32, 3]
    iio.imwrite(tmp_path / "p.png", values)
    values = values.astype(np.float32) / 255
    out = load_image(tmp_path / "p.png", 16, 3)
    torch.testing.assert_close(out, _resized(values, (24, 16))[4:20], rtol=0, atol=1e-6)
    big = load_image(tmp_path / "p.png", 40, 3)  # upscaled to [60, 40], rows 10..49 kept
    assert big.shape == (40, 40, 3) and 0 <= big.min() and big.max() <= 1
    torch.testing.assert_close(big, _resized(values, (60, 40))[10:50], rtol=0, atol=1e-6)


def test_bicubic_overshoot_is_clamped(tmp_path):
    board = (np.indices((4, 4)).sum(0) % 2 * 255).astype(np.uint8)
    iio.imwrite(tmp_path / "board.png", board)
    x = F.interpolate(torch.from_numpy(board / 255).float()[None, None], size=(9, 9), mode="bicubic", antialias=True)
    assert x.min() < 0 and x.max() > 1  # the test means something
    out = load_image(tmp_path / "board.png", 9, 1)
    assert out.min() == 0 and out.max() == 1
    torch.testing.assert_close(out[..., 0], x[0, 0].clamp(0, 1), rtol=0, atol=1e-6)


def _jpeg(path: Path, pixels: np.ndarray, mode: str = "RGB") -> Path:
    from PIL import Image

    Image.fromarray(pixels).convert(mode).save(path, "JPEG", quality=95)
    return path


@pytest.fixture
def smooth():
    """A 96x128 photo-like RGB image: smooth gradients and a few edges (a JPEG decodes it well)."""
    y, x = np.mgrid[0:96, 0:128] / 32.0
    pixels = np.stack([np.sin(x) * np.cos(y), np.cos(0.7 * x + y), (x > 2) * 0.5 + 0.2 * np.sin(y)], -1)
    return ((pixels - pixels.min()) / np.ptp(pixels) * 255).astype(np.uint8)


def test_jpeg_draft_decodes_at_a_reduced_scale_that_keeps_res(tmp_path, smooth, monkeypatch):
    """A JPEG twice the grid or more is decoded at 1/2, 1/4 or 1/8 scale (libjpeg's DCT scaling),
    never below the grid: the target stays close to the full decode's, and smaller ones are unchanged."""
    from PIL import Image, JpegImagePlugin

    path = _jpeg(tmp_path / "s.jpg", smooth)
    sizes = []
    draft = JpegImagePlugin.JpegImageFile.draft
    monkeypatch.setattr(JpegImagePlugin.JpegImageFile, "draft",
                        lambda im, mode, size: sizes.append(size) or draft(im, mode, size))
    for res, scale in ((48, 2), (40, 2), (24, 4), (12, 8), (8, 8)):
        sizes.clear()
        reduced = load_image(path, res, 3)
        full = load_image(path, res, 3, draft=False)
        assert sizes and min(sizes[0]) == res  # asked for the smallest scale that still covers the grid
        assert reduced.shape == full.shape == (res, res, 3)
        mse = (reduced - full).pow(2).mean().item()
        assert 0 < mse and -10 * np.log10(mse) > 30, (res, mse)  # a reduced decode happened, and it is close
        with Image.open(path) as im:  # libjpeg's choice: the largest reduction still >= the request
            im.draft("RGB", sizes[0])
            assert im.size == (128 // scale, 96 // scale)
    sizes.clear()
    assert torch.equal(load_image(path, 49, 3), load_image(path, 49, 3, draft=False))  # 1/2 scale (48 rows) is too small
    assert torch.equal(load_image(path, 96, 3), load_image(path, 96, 3, draft=False))


def test_jpeg_draft_handles_cmyk_and_grey(tmp_path, smooth):
    for mode, channels in (("CMYK", 3), ("L", 1)):
        path = _jpeg(tmp_path / f"{mode}.jpg", smooth, mode)
        reduced, full = load_image(path, 24, channels), load_image(path, 24, channels, draft=False)
        assert reduced.shape == full.shape == (24, 24, channels)
        assert (reduced - full).abs().mean() < 0.02


def test_grey_to_rgb_repeats_and_rgb_to_grey_is_bt601_luma(tmp_path, data_dir):
    grey = load_image(data_dir / "camera_32.png", 16, 3)
    assert grey.shape == (16, 16, 3)
    assert torch.equal(grey[..., 0], grey[..., 1]) and torch.equal(grey[..., 0], grey[..., 2])
    torch.testing.assert_close(grey[..., :1], load_image(data_dir / "camera_32.png", 16, 1))

    pixels = np.array([[[200, 100, 50], [0, 0, 255]], [[255, 255, 255], [10, 20, 30]]], np.uint8)
    iio.imwrite(tmp_path / "c.png", pixels)
    luma = load_image(tmp_path / "c.png", 2, 1)
    assert luma.shape == (2, 2, 1)
    assert luma[0, 0, 0].item() == pytest.approx((0.299 * 200 + 0.587 * 100 + 0.114 * 50) / 255, abs=1e-6)
    assert luma[0, 1, 0].item() == pytest.approx(0.114, abs=1e-6)
    assert luma[1, 0, 0].item() == pytest.approx(1.0, abs=1e-6)


def test_alpha_is_dropped_and_16_bit_is_read(tmp_path):
    rgba = np.random.default_rng(1).integers(0, 256, size=(4, 4, 4), dtype=np.uint8)
    iio.imwrite(tmp_path / "rgba.png", rgba)
    torch.testing.assert_close(load_image(tmp_path / "rgba.png", 4, 3), torch.from_numpy(rgba[..., :3] / 255).float())
    iio.imwrite(tmp_path / "la.png", rgba[..., :2].copy())
    torch.testing.assert_close(load_image(tmp_path / "la.png", 4, 1), torch.from_numpy(rgba[..., :1] / 255).float())
    deep = np.random.default_rng(2).integers(0, 65536, size=(4, 4, 1), dtype=np.uint16)
    write_image(tmp_path / "deep.png", deep, "png")
    torch.testing.assert_close(load_image(tmp_path / "deep.png", 4, 1), torch.from_numpy(deep / 65535).float())


def test_real_jpeg_and_bad_files(tmp_path, data_dir):
    out = load_image(data_dir / "rocket_48x32.jpg", 8, 3)
    assert out.shape == (8, 8, 3) and out.std() > 0.02
    with pytest.raises(InputError, match="cannot decode") as err:
        load_image(_garbage(tmp_path / "x.png"), 8, 3)
    assert err.value.where == str(tmp_path / "x.png")
    # a truncated 16-bit PNG fails inside pypng, not Pillow
    write_image(tmp_path / "deep.png", np.zeros((8, 8, 3), np.uint16), "png")
    (tmp_path / "cut.png").write_bytes((tmp_path / "deep.png").read_bytes()[:40])
    with pytest.raises(InputError, match="cannot decode"):
        load_image(tmp_path / "cut.png", 8, 3)
    with pytest.raises(InputError, match="cannot read"):
        load_image(tmp_path / "gone.png", 8, 3)


# ---------------------------------------------------------------------------- split_files


def test_split_is_deterministic_disjoint_and_sized():
    files = [Path(f"f{i:02d}.png") for i in range(20)]
    train, val = split_files(files, 0.2, seed=3)
    assert (train, val) == split_files(list(reversed(files)), 0.2, seed=3)  # input order does not matter
    assert len(val) == 4 and len(train) == 16 and not set(train) & set(val) and sorted(train + val) == files
    assert train == sorted(train) and val == sorted(val)
    assert split_files(files, 0.2, seed=4)[1] != val
    assert len(split_files(files, 0.001, 0)[1]) == 1  # a positive fraction gives at least one
    assert split_files(files, 0.0, 0) == (files, [])
    assert [len(x) for x in split_files(files[:3], 0.9, 0)] == [1, 2]  # training keeps one
    assert split_files(files[:1], 0.5, 0) == (files[:1], [])
    for bad in (1.0, -0.1, float("nan")):
        with pytest.raises(ConfigError, match="--val-fraction: must be in"):
            split_files(files, bad, 0)


# ---------------------------------------------------------------------------- batch order


def _epoch(n: int, seed: int, e: int) -> list[int]:
    return torch.randperm(n, generator=torch.Generator().manual_seed(seed * 1_000_003 + e)).tolist()


def test_batch_indices_walk_seeded_epochs():
    n, b, seed = 12, 4, 7
    assert batch_indices(n, b, seed, 5) == batch_indices(n, b, seed, 5)
    first = _flat(batch_indices(n, b, seed, s) for s in range(3))
    second = _flat(batch_indices(n, b, seed, s) for s in range(3, 6))
    assert sorted(first) == sorted(second) == list(range(n)) and first != second
    assert first == _epoch(n, seed, 0) and second == _epoch(n, seed, 1)
    assert batch_indices(n, b, seed + 1, 0) != batch_indices(n, b, seed, 0)
    # n not a multiple of the batch: batches straddle epochs
    stream = _flat(batch_indices(5, 3, seed, s) for s in range(5))
    assert stream == _flat(_epoch(5, seed, e) for e in range(3))


def test_batch_larger_than_dataset_draws_from_several_epochs():
    step1 = batch_indices(3, 7, 0, 1)  # positions 7..13: epochs 2, 3, 4
    assert step1 == (_epoch(3, 0, 2) + _epoch(3, 0, 3) + _epoch(3, 0, 4))[1:8]
    assert batch_indices(1, 4, 0, 9) == [0, 0, 0, 0]


def test_resuming_gives_the_same_batches():
    full = [batch_indices(10, 4, 1, s) for s in range(10)]
    assert [batch_indices(10, 4, 1, s) for s in range(5, 10)] == full[5:]


def test_rank_slices_concatenate_to_the_global_batch():
    batch = batch_indices(10, 6, 0, 3)
    for world in (1, 2, 3, 6):
        slices = [rank_slice(batch, r, world) for r in range(world)]
        assert _flat(slices) == batch and {len(s) for s in slices} == {6 // world}
    with pytest.raises(ConfigError, match="--batch-size: global batch 6 is not divisible by 4 processes"):
        rank_slice(batch, 0, 4)


# ---------------------------------------------------------------------------- datasets


def test_image_folder_returns_a_reason_for_bad_files(tmp_path):
    files = _folder(tmp_path, 3, bad=(1,))
    (tmp_path / "empty.png").write_bytes(b"")
    ds = ImageFolder(files + [tmp_path / "empty.png", tmp_path / "deleted.png"], 8, 3)
    i, t, reason = ds[0]
    assert i == 0 and t.shape == (8, 8, 3) and reason is None
    for k in (1, 3, 4):
        i, t, reason = ds[k]
        assert i == k and t is None and isinstance(reason, str) and "\n" not in reason
    assert ds[1][2].startswith("cannot decode as an image (")
    idx, stacked, bad = collate([ds[0], ds[1], ds[2]])
    assert idx == [0, 2] and stacked.shape == (2, 8, 8, 3) and [b[0] for b in bad] == [1]
    assert collate([ds[1]])[1] is None


def test_guess_channels(tmp_path, data_dir, photo):
    assert guess_channels([photo]) == 3 and guess_channels([data_dir / "camera_32.png"]) == 1
    assert guess_channels([photo, data_dir / "camera_32.png"]) == 1  # sorted: camera_ comes before chelsea_
    la = tmp_path / "la.png"
    iio.imwrite(la, np.zeros((3, 3, 2), np.uint8))
    assert guess_channels([la]) == 1
    rgb = tmp_path / "c.png"
    rgb.write_bytes(photo.read_bytes())
    assert guess_channels([_garbage(tmp_path / "a.png"), rgb, la]) == 3  # the first readable one decides
    bad = [_garbage(tmp_path / f"b{i}.png") for i in range(9)]
    late = tmp_path / "z.png"  # beside the bad ones, so it sorts after them wherever the checkout lives
    late.write_bytes(photo.read_bytes())
    with pytest.raises(InputError, match="cannot decode"):
        guess_channels(bad + [late])  # the readable one is the 10th: not tried


def _expected(ds: ImageFolder, n_batch: int, seed: int, steps: range, rank: int = 0, world: int = 1):
    return [
        torch.stack([ds[i][1] for i in rank_slice(batch_indices(len(ds), n_batch, seed, s), rank, world)])
        for s in steps
    ]


def test_batch_stream_steps_shapes_and_contents(tmp_path):
    ds = ImageFolder(_folder(tmp_path, 6), 8, 3)
    stream = BatchStream(ds, 4, seed=2, start_step=0, steps=5)
    got = list(stream)
    assert [s for s, _ in got] == list(range(5)) and len(stream) == 5
    assert all(t.shape == (4, 8, 8, 3) and t.dtype == torch.float32 for _, t in got)
    for (_, t), want in zip(got, _expected(ds, 4, 2, range(5))):
        assert torch.equal(t, want)
    assert stream.loaded == 20 and stream.bad == {}
    # resuming at step 3 gives the same batches as the uninterrupted run
    resumed = list(BatchStream(ds, 4, seed=2, start_step=3, steps=5))
    assert [s for s, _ in resumed] == [3, 4]
    assert all(torch.equal(a, b) for (_, a), (_, b) in zip(resumed, got[3:]))
    # two ranks each get their half of the same global batches
    halves = [list(BatchStream(ds, 4, 2, 0, 5, rank=r, world=2)) for r in range(2)]
    for s in range(5):
        assert torch.equal(torch.cat([halves[0][s][1], halves[1][s][1]]), got[s][1])
    with pytest.raises(ConfigError, match="not divisible by 3"):
        BatchStream(ds, 4, 2, 0, 5, world=3)


def test_batch_stream_with_workers_matches_main_process(tmp_path):
    ds = ImageFolder(_folder(tmp_path, 5, bad=(3,)), 8, 3)
    runs = []
    for workers in (0, 2):
        messages, warn = _recorder()
        stream = BatchStream(ds, 3, seed=1, start_step=1, steps=7, workers=workers, warn=warn)
        runs.append(([(s, t.clone()) for s, t in stream], messages, stream.loaded))
        del stream
    (a, msg_a, loaded_a), (b, msg_b, loaded_b) = runs
    assert [s for s, _ in a] == [s for s, _ in b] and all(torch.equal(x, y) for (_, x), (_, y) in zip(a, b))
    assert msg_a == msg_b and len(msg_a) == 1 and loaded_a == loaded_b


def test_batch_stream_warns_once_skips_and_counts_bad_files(tmp_path):
    files = _folder(tmp_path, 4, bad=(2,))
    ds = ImageFolder(files, 8, 3)
    messages, warn = _recorder()
    stream = BatchStream(ds, 4, seed=0, start_step=0, steps=3, warn=warn)
    got = list(stream)
    assert [s for s, _ in got] == [0, 1, 2] and all(t.shape == (3, 8, 8, 3) for _, t in got)
    assert len(messages) == 1 and messages[0].startswith(f"{files[2]}: cannot decode as an image")
    assert list(stream.bad) == [files[2]] and stream.loaded == 9
    # default warning goes through the warnings module
    with pytest.warns(UserWarning, match="img02.png: cannot decode"):
        list(BatchStream(ds, 4, seed=0, start_step=0, steps=1))
    with pytest.raises(InputError, match="img02.png: cannot decode") as err:
        list(BatchStream(ds, 4, seed=0, start_step=0, steps=3, strict=True))
    assert err.value.where == str(files[2])


def test_a_step_whose_files_all_fail_yields_nothing(tmp_path):
    files = _folder(tmp_path, 2, bad=(1,))
    ds = ImageFolder(files, 8, 3)
    messages, warn = _recorder()
    stream = BatchStream(ds, 2, seed=5, start_step=0, steps=6, rank=1, world=2, warn=warn)
    steps = [s for s, t in stream]
    expected = [s for s in range(6) if rank_slice(batch_indices(2, 2, 5, s), 1, 2) == [0]]
    assert steps == expected and 0 < len(steps) < 6 and len(messages) == 1 and stream.loaded == len(steps)


def test_load_all(tmp_path):
    files = _folder(tmp_path, 4, bad=(1,))
    ds = ImageFolder(files, 8, 1)
    messages, warn = _recorder()
    kept, targets = load_all(ds, [3, 1, 0], strict=False, warn=warn)
    assert kept == [3, 0] and targets.shape == (2, 8, 8, 1)
    assert torch.equal(targets[0], load_image(files[3], 8, 1))
    assert len(messages) == 1 and str(files[1]) in messages[0]
    with pytest.raises(InputError, match="img01.png: cannot decode"):
        load_all(ds, [0, 1], strict=True, warn=warn)
    with pytest.raises(InputError, match="no readable validation files"):
        load_all(ds, [1], strict=False, warn=warn)
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        assert load_all(ds, [0], strict=True, warn=None)[0] == [0]


def test_data_summary_json():
    s = DataSummary(root="/x", files=10, train=8, val=2, res=32, channels=3, bad=1)
    assert s.to_json() == {"root": "/x", "files": 10, "train": 8, "val": 2, "res": 32, "channels": 3, "bad": 1,
                           "modality": "image", "shape": None, "rate": None, "tile": None}


def test_sort_paths_is_the_order_of_sorted_paths():
    from nfit.data import sort_paths

    names = ["a/b.png", "a-c.png", "A/b.png", "a/B.png", "a.b/c.png", "a/b/c.png", "ab.png", "a b.png", "é.png", "z.png"]
    paths = [Path("/data", n) for n in names]
    assert sort_paths(paths) == sorted(paths) != sorted(paths, key=str)  # not the order of the strings
