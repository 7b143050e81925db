"""Reading and writing videos: every container, frame selection, cropping, round trips, and the bad files."""

import shutil
import weakref

import av
import numpy as np
import pytest
from PIL import Image

from nfit.atomic import atomic_frames_dir, atomic_output, stale_temporaries
from nfit.errors import ConfigError, InputError, OutputError
from nfit.signals import video
from nfit.signals.video import output_format, probe_video, read_video, write_video

FORMATS = ["mp4", "mov", "webm", "avi", "mkv"]  # tests/data/video/carphone_88x72.*: 8 frames, 88x72


@pytest.fixture
def clip(data_dir):
    return lambda ext: data_dir / "video" / f"carphone_88x72.{ext}"


def psnr(a, b):
    return -10 * np.log10(max(np.mean((np.asarray(a, np.float64) - b) ** 2), 1e-12))


def _u8(values):
    return (values * 255 + 0.5).astype(np.uint8)


def _encode(path, arrays, codec, pix_fmt, in_fmt, fmt):
    """A lossless test video made here (PNG frames in MOV)."""
    with av.open(str(path), "w", format=fmt) as c:
        s = c.add_stream(codec, rate=25)
        s.height, s.width, s.pix_fmt = arrays.shape[1], arrays.shape[2], pix_fmt
        for i, a in enumerate(arrays):
            frame = av.VideoFrame.from_ndarray(a, format=in_fmt)
            frame.pts = i
            c.mux(s.encode(frame))
        c.mux(s.encode(None))


# ------------------------------------------------------------------------ reading


@pytest.mark.parametrize("ext", FORMATS + ["m4v"])
def test_every_format_reads(tmp_path, clip, ext):
    path = clip(ext)
    if ext == "m4v":  # an MP4 by another name
        path = tmp_path / "c.m4v"
        shutil.copy(clip("mp4"), path)
    info = probe_video(path)
    assert (info.width, info.height) == (88, 72) and info.fps == pytest.approx(30000 / 1001)
    assert info.frames == (None if ext in ("webm", "mkv") else 8)  # Matroska declares no count
    values, fps = read_video(path)
    assert values.shape == (8, 72, 88, 3) and values.dtype == np.float32
    assert fps == pytest.approx(30000 / 1001)
    assert 0 <= values.min() and values.max() <= 1 and values.std() > 0.1
    reference, _ = read_video(clip("mp4"))
    assert psnr(values, reference) > 33  # the same frames, through another lossy codec


@pytest.mark.parametrize("ext", FORMATS)
def test_frames_stride_start_select(clip, ext):
    everything, fps = read_video(clip(ext))
    for frames, stride, start in [(3, 1, 0), (3, 2, 1), (2, 3, 2), (1, 1, 7), (None, 3, 1)]:
        values, rate = read_video(clip(ext), frames=frames, stride=stride, start=start)
        np.testing.assert_array_equal(values, everything[start::stride][:frames])
        assert rate == pytest.approx(fps / stride)


def test_decoding_stops_once_enough(monkeypatch, clip):
    yielded = []
    real_open = video._open

    class Spy:  # counts the frames the decoder hands over
        def __init__(self, path):
            self.container = real_open(path)
            self.streams, self.format = self.container.streams, self.container.format

        def __enter__(self):
            return self

        def __exit__(self, *exc):
            self.container.close()

        def decode(self, stream):
            for frame in self.container.decode(stream):
                yielded.append(frame.pts)
                yield frame

    monkeypatch.setattr(video, "_open", Spy)
    values, _ = read_video(clip("mp4"), frames=2, stride=2, start=1)
    assert len(values) == 2 and len(yielded) == 4  # frames 0..3: 1 and 3 kept, 4.. never decoded


def test_res_crops_the_centre_square(clip):
    full, _ = read_video(clip("mp4"))  # [8, 72, 88, 3]
    square, _ = read_video(clip("mp4"), res=72)  # the side already: crop only, no resampling
    np.testing.assert_array_equal(square, full[:, :, 8:80])
    small, _ = read_video(clip("mp4"), res=36, frames=2)
    assert small.shape == (2, 36, 36, 3) and 0 <= small.min() and small.max() <= 1
    box = full[:2, :, 8:80].reshape(2, 36, 2, 36, 2, 3).mean(axis=(2, 4))  # the crop, halved
    assert np.abs(small - box).mean() < 0.02


def test_grey_and_alpha_come_out_rgb(tmp_path, clip):
    rgb = _u8(read_video(clip("mp4"), frames=3)[0])
    _encode(tmp_path / "g.mov", rgb[..., 1], "png", "gray", "gray", "mov")
    grey, fps = read_video(tmp_path / "g.mov")
    assert grey.shape == (3, 72, 88, 3) and fps == 25
    np.testing.assert_array_equal(grey, np.repeat(rgb[..., 1:2], 3, axis=3) / np.float32(255))
    rgba = np.concatenate([rgb, np.full((3, 72, 88, 1), 77, np.uint8)], axis=3)
    _encode(tmp_path / "a.mov", rgba, "png", "rgba", "rgba", "mov")
    np.testing.assert_array_equal(read_video(tmp_path / "a.mov")[0], rgb / np.float32(255))  # alpha dropped


def _raises(path, **kwargs) -> str:
    with pytest.raises(InputError) as err:
        read_video(path, **kwargs)
    text = str(err.value)
    assert str(path) in text and "\n" not in text
    return text


def test_bad_files_are_one_line_input_errors(tmp_path, clip):
    (tmp_path / "empty.mp4").write_bytes(b"")
    assert "empty" in _raises(tmp_path / "empty.mp4")
    (tmp_path / "text.mp4").write_text("not a video\n" * 20)
    assert "cannot decode" in _raises(tmp_path / "text.mp4")
    assert "no such file" in _raises(tmp_path / "missing.mp4")
    data = clip("mp4").read_bytes()  # its index (moov) is at the end: lost with it
    (tmp_path / "cut.mp4").write_bytes(data[: len(data) // 2])
    _raises(tmp_path / "cut.mp4")
    with pytest.raises(InputError):
        probe_video(tmp_path / "cut.mp4")

    with av.open(str(tmp_path / "audio.mp4"), "w", format="mp4") as c:
        s = c.add_stream("aac", rate=8000)
        frame = av.AudioFrame.from_ndarray(np.zeros((1, 1024), np.float32), format="fltp", layout="mono")
        frame.sample_rate, frame.pts = 8000, 0
        c.mux(s.encode(frame))
        c.mux(s.encode(None))
    assert "no video stream (only audio)" in _raises(tmp_path / "audio.mp4")


def test_truncated_faststart_mp4(tmp_path, clip):
    # write_video puts the index first: a cut file still opens and declares 8 frames
    path = tmp_path / "fast.mp4"
    write_video(path, _u8(read_video(clip("mp4"))[0]), "mp4", 30)
    data = path.read_bytes()
    (tmp_path / "cut.mp4").write_bytes(data[: int(len(data) * 0.6)])
    assert probe_video(tmp_path / "cut.mp4").frames == 8
    _raises(tmp_path / "cut.mp4")


def test_too_few_frames(clip):
    assert "has 8 frames; 9 frames need 9" in _raises(clip("mp4"), frames=9)
    read_video(clip("webm"), frames=4, stride=2, start=1)  # exactly enough
    assert "5 frames at stride 2 need 9" in _raises(clip("webm"), frames=5, stride=2)
    assert "none from frame 8" in _raises(clip("avi"), start=8)


def test_value_limit(monkeypatch, clip):
    monkeypatch.setattr(video, "MAX_VIDEO_VALUES", 8 * 72 * 88 * 3 - 1)
    assert "MAX_VIDEO_VALUES" in _raises(clip("mp4"))
    assert read_video(clip("mp4"), frames=7)[0].shape == (7, 72, 88, 3)  # the limit is on what is kept
    monkeypatch.setattr(video, "MAX_IMAGE_PIXELS", 88 * 72 - 1)
    with pytest.raises(InputError, match="MAX_IMAGE_PIXELS"):
        probe_video(clip("mp4"))


def test_bad_arguments(clip):
    for kwargs in ({"frames": 0}, {"stride": 0}, {"start": -1}, {"res": 0}):
        with pytest.raises(ConfigError):
            read_video(clip("mp4"), **kwargs)


# ------------------------------------------------------------------------ writing


def test_output_format(tmp_path):
    assert output_format(tmp_path / "a.mp4") == "mp4" and output_format("b.WEBM") == "webm"
    assert output_format("frames/") == output_format(tmp_path / "frames") == "frames"
    (tmp_path / "x.v2").mkdir()
    assert output_format(tmp_path / "x.v2") == "frames"  # an existing folder
    with pytest.raises(ConfigError, match=r"\.gif.*\.mp4.*\.webm.*folder"):
        output_format("a.gif")


@pytest.mark.parametrize("fmt", ["mp4", "webm"])
def test_round_trip_lossy(tmp_path, clip, fmt):
    source = _u8(read_video(clip("mp4"))[0])
    for (h, w), fps in [((72, 88), 30000 / 1001), ((71, 87), 12.5)]:  # odd: 4:4:4 in H.264
        path = tmp_path / f"{h}.{fmt}"
        with atomic_output(path) as tmp:  # a temporary name: the container is named explicitly
            write_video(tmp, iter(source[:, :h, :w]), fmt, fps, quality=95)
        values, rate = read_video(path)
        assert values.shape == (8, h, w, 3) and rate == pytest.approx(fps)
        assert psnr(values, source[:, :h, :w] / 255.0) > 38
    low = tmp_path / f"low.{fmt}"
    write_video(low, source, fmt, 30, quality=30)
    assert low.stat().st_size < (tmp_path / f"72.{fmt}").stat().st_size / 2


def test_png_frames_are_exact_and_grey_becomes_rgb(tmp_path, clip):
    source = _u8(read_video(clip("mp4"), frames=3)[0])
    with atomic_frames_dir(tmp_path / "out") as tmp:
        write_video(tmp, iter(source), "frames", 30)
    names = sorted(p.name for p in (tmp_path / "out").iterdir())
    assert names == ["frame_00000.png", "frame_00001.png", "frame_00002.png"]
    for i, name in enumerate(names):
        np.testing.assert_array_equal(np.asarray(Image.open(tmp_path / "out" / name)), source[i])
    write_video(tmp_path / "grey", iter(source[..., :1]), "frames", 30)
    assert np.asarray(Image.open(tmp_path / "grey" / "frame_00000.png")).shape == (72, 88, 3)
    write_video(tmp_path / "grey.mp4", iter(source[..., :1]), "mp4", 30)
    assert read_video(tmp_path / "grey.mp4")[0].shape == (3, 72, 88, 3)


@pytest.mark.parametrize("fmt", ["mp4", "webm", "frames"])
def test_writer_streams_frames(tmp_path, fmt):
    alive, pulled = [], []

    def frames():
        for i in range(6):
            assert all(ref() is None for ref in alive), "the writer kept an earlier frame"
            frame = np.full((16, 24, 3), 40 * i, np.uint8)
            alive.append(weakref.ref(frame))
            pulled.append(i)
            yield frame
            del frame

    write_video(tmp_path / ("out" if fmt == "frames" else f"out.{fmt}"), frames(), fmt, 10)
    assert pulled == list(range(6))  # taken once, in order, one at a time


@pytest.mark.parametrize("fmt", ["mp4", "webm", "frames"])
def test_failing_write_leaves_nothing(tmp_path, fmt):
    target = tmp_path / ("out" if fmt == "frames" else f"out.{fmt}")
    atomic = atomic_frames_dir if fmt == "frames" else atomic_output

    def frames():
        yield from np.zeros((3, 16, 16, 3), np.uint8)
        raise RuntimeError("renderer failed")

    with pytest.raises(RuntimeError, match="renderer failed"), atomic(target) as tmp:  # the caller's error, unchanged
        write_video(tmp, frames(), fmt, 10)
    assert list(tmp_path.iterdir()) == [] and stale_temporaries(target) == []


def test_write_errors(tmp_path):
    frame = np.zeros((16, 16, 3), np.uint8)
    with pytest.raises(OutputError, match="missing"):
        write_video(tmp_path / "missing" / "a.mp4", [frame], "mp4", 10)
    with pytest.raises(OutputError, match="no frames"):
        write_video(tmp_path / "a.mp4", [], "mp4", 10)
    with pytest.raises(ValueError, match="expected"):
        write_video(tmp_path / "b.mp4", [frame, frame[:8]], "mp4", 10)
    with pytest.raises(ConfigError):
        write_video(tmp_path / "c.mp4", [frame], "mp4", 10, quality=0)
    with pytest.raises(ConfigError):
        write_video(tmp_path / "c.mp4", [frame], "mp4", 0)
    (tmp_path / "full").mkdir()
    (tmp_path / "full" / "old.png").write_bytes(b"x")
    with pytest.raises(OutputError, match="not empty"), atomic_frames_dir(tmp_path / "full"):  # refused up front
        pytest.fail("should not get here")
    assert [p.name for p in (tmp_path / "full").iterdir()] == ["old.png"]
    (tmp_path / "empty").mkdir()
    with atomic_frames_dir(tmp_path / "empty") as tmp:
        write_video(tmp, [frame], "frames", 10)
    assert [p.name for p in (tmp_path / "empty").iterdir()] == ["frame_00000.png"]
