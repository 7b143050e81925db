"""NeRV (Chen et al. 2021): a frame index in, a whole frame out; batched per signal.

The field maps a time t in [-1, 1] to one frame of ``frame_height x frame_width x
out_dim`` values:

    t -> NeRV's positional encoding [sin(1.25^i pi t), cos(1.25^i pi t)], i < pe_levels
      -> MLP (``mlp_depth`` linear layers, each followed by GELU) -> a base feature map
         [base_channels, H / S, W / S], S = prod(strides)
      -> one NeRV block per stride r: 3x3 conv to channels[i] * r^2, PixelShuffle(r), GELU
      -> 1x1 conv head to out_dim channels, linear, + out_offset

Its *unit* is a frame, not a grid sample: ``__call__`` returns ``[B, n, H*W*C]``,
one row per frame (samples in (y, x, channel) order, channels last), and GradNCP
prunes whole frames (``unit_scores``), as the GradNCP paper did on NeRV. The frame
axis is continuous (any time works); the frame size is fixed by the decoder, so
``from_units`` resizes frames for renders at another size.

Per-signal weights run as one *grouped* convolution: the features of B signals and
n frames are laid out ``[n, B * C, h, w]`` and every conv is called once with
``groups=B`` on the weights reshaped ``[B * Cout, Cin, k, k]``. PixelShuffle maps input
channel ``c * r^2 + k`` to output channel ``c``; with channels ordered
``b * Cout * r^2 + c * r^2 + k`` that is output channel ``b * Cout + c``, so each
signal's channels stay together and no reshuffling is needed between layers.

Parameter names: the MLP's ``l{i}.weight [out, in]`` / ``l{i}.bias`` (as in
:func:`~nfit.fields.base.mlp_param_shapes`), block i's ``c{i}.weight [Cout*r^2, Cin, 3, 3]``
/ ``c{i}.bias``, and ``head.weight [out_dim, Cin, 1, 1]`` / ``head.bias``.

Defaults (128x128 frames, 706,915 parameters): the GradNCP reference's NeRV for
UCF-101 128x128x16 ("small") has the same structure (strides (4, 2, 2, 2), a 4x4x32
base map, 40 encoding levels) with a 512-wide MLP and channels (128, 64, 32, 32):
1,302,115 parameters, and a tanh output instead of a linear one. The NeRV paper's own
video models are larger still (NeRV-S/M/L: 3.2 M / 6.3 M / 12.6 M parameters on
1920x1080 frames with strides (5, 3, 2, 2, 2) or (5, 2, 2, 2, 2, 2)).
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import ClassVar

import torch
import torch.nn.functional as F
from torch import Tensor

from nfit.errors import ConfigError
from nfit.fields.base import Params, linear, mlp_param_shapes, register_field, uniform
from nfit.signals.grid import grid_coords


def _positive_int(value, what: str) -> None:
    if isinstance(value, bool) or not isinstance(value, int) or value < 1:
        raise ValueError(f"{what} must be a positive integer, not {value!r}")


@dataclass(frozen=True)
class NeRVConfig:
    frame_height: int = 128  # the native frame size: the decoder's output, fixed
    frame_width: int = 128
    out_dim: int = 3
    strides: tuple[int, ...] = (4, 2, 2, 2)  # one NeRV block (upsampling factor) each; product divides the frame
    channels: tuple[int, ...] = (64, 64, 32, 32)  # output channels of each block (the head's input: the last)
    base_channels: int = 32  # channels of the MLP's base map [base_channels, H / prod(strides), W / prod(strides)]
    pe_levels: int = 40  # positional encoding: 2 * pe_levels features
    pe_base: float = 1.25
    mlp_width: int = 256
    mlp_depth: int = 2  # linear layers in the MLP: 1 maps the encoding straight to the base map
    out_offset: float = 0.5  # a zero-mean net then predicts mid-range for targets in [0, 1]

    def __post_init__(self):
        # JSON turns tuples into lists: take them back
        for name in ("strides", "channels"):
            value = getattr(self, name)
            if not isinstance(value, (list, tuple)):
                raise TypeError(f"{name} must be a list of positive integers, not {value!r}")
            object.__setattr__(self, name, tuple(value))
        for name in ("frame_height", "frame_width", "out_dim", "base_channels", "pe_levels", "mlp_width", "mlp_depth"):
            _positive_int(getattr(self, name), name)
        if not self.strides:
            raise ValueError("strides must name at least one block")
        for s in self.strides:
            _positive_int(s, "every stride")
        for c in self.channels:
            _positive_int(c, "every block's channels")
        if len(self.channels) != len(self.strides):
            raise ValueError(
                f"channels ({len(self.channels)}) and strides ({len(self.strides)}) must have one entry per block"
            )
        scale = math.prod(self.strides)
        if self.frame_height % scale or self.frame_width % scale:
            raise ValueError(
                f"the product of the strides ({scale}) must divide the frame size {self.frame_height}x{self.frame_width}"
            )
        if isinstance(self.pe_base, bool) or not isinstance(self.pe_base, (int, float)) or not self.pe_base > 0:
            raise ValueError("pe_base must be positive")
        if (
            isinstance(self.out_offset, bool)
            or not isinstance(self.out_offset, (int, float))
            or not math.isfinite(self.out_offset)
        ):
            raise ValueError("out_offset must be a finite number")


def _grouped_conv(x: Tensor, weight: Tensor, bias: Tensor, padding: int) -> Tensor:
    """Per-signal conv: x [n, B * Cin, h, w], weight [B, Cout, Cin, k, k], bias [B, Cout] -> [n, B * Cout, h, w]."""
    batch, c_out = weight.shape[:2]
    return F.conv2d(
        x, weight.reshape(batch * c_out, *weight.shape[2:]), bias.reshape(batch * c_out), padding=padding, groups=batch
    )


@register_field
class NeRV:
    name: ClassVar[str] = "nerv"
    Config: ClassVar[type] = NeRVConfig

    def __init__(self, config: NeRVConfig):
        self.config = c = config
        scale = math.prod(c.strides)
        self.base_hw = (c.frame_height // scale, c.frame_width // scale)
        self.mlp_dims = (
            [2 * c.pe_levels] + [c.mlp_width] * (c.mlp_depth - 1) + [c.base_channels * math.prod(self.base_hw)]
        )
        self.block_dims = list(zip([c.base_channels, *c.channels[:-1]], c.channels, c.strides))  # (Cin, Cout, r)
        self.features = c.channels[-1]  # the head's input channels
        # float64 so the high levels (1.25^39 pi ~ 1.8e4) are exact before the cast
        self.freqs = (c.pe_base ** torch.arange(c.pe_levels, dtype=torch.float64)) * math.pi

    # -- the field ---------------------------------------------------------------

    def param_shapes(self) -> dict[str, tuple[int, ...]]:
        shapes = mlp_param_shapes(self.mlp_dims)
        for i, (c_in, c_out, r) in enumerate(self.block_dims):
            shapes[f"c{i}.weight"] = (c_out * r * r, c_in, 3, 3)
            shapes[f"c{i}.bias"] = (c_out * r * r,)
        shapes["head.weight"] = (self.config.out_dim, self.features, 1, 1)
        shapes["head.bias"] = (self.config.out_dim,)
        return shapes

    def init_params(self, generator: torch.Generator) -> Params:
        """PyTorch's default for nn.Linear and nn.Conv2d: weights and biases U(+-1/sqrt(fan_in))."""
        params: Params = {}
        for name, shape in self.param_shapes().items():
            if name.endswith(".weight"):
                bound = 1.0 / math.sqrt(math.prod(shape[1:]))  # fan_in: in, or Cin * k * k
            params[name] = uniform(shape, bound, generator)  # a bias follows its weight
        return params

    def encode(self, t: Tensor) -> Tensor:
        """[..., 1] -> [..., 2 * pe_levels]: sin, cos of each level, interleaved as in NeRV."""
        proj = t * self.freqs.to(device=t.device, dtype=t.dtype)  # [..., L]
        return torch.stack([torch.sin(proj), torch.cos(proj)], dim=-1).flatten(-2)

    def __call__(self, params: Params, coords: Tensor, *, features: bool = False):
        """coords: frame times [n, 1] (shared) or [B, n, 1] (per signal).

        Returns the frames [B, n, H * W * out_dim] (each frame flattened (y, x, channel))
        and, with ``features``, the head's input [B, n, Cin * H * W] (flattened (channel, y, x)).
        """
        c = self.config
        batch = params["head.bias"].shape[0]
        if coords.shape[-1] != 1 or coords.dim() not in (2, 3):
            raise ValueError(f"NeRV takes frame times [n, 1] or [B, n, 1], not {list(coords.shape)}")
        n = coords.shape[-2]
        h = self.encode(coords)  # [n, 2L] or [B, n, 2L]
        for i in range(len(self.mlp_dims) - 1):
            h = F.gelu(linear(h, params[f"l{i}.weight"], params[f"l{i}.bias"]))  # [B, n, .]
        # [B, n, C0 * h0 * w0] -> [n, B * C0, h0, w0]: frames are the conv batch, signals the groups
        x = h.transpose(0, 1).reshape(n, batch * c.base_channels, *self.base_hw)
        for i, (_, c_out, r) in enumerate(self.block_dims):
            x = _grouped_conv(x, params[f"c{i}.weight"], params[f"c{i}.bias"], padding=1)  # [n, B * Cout * r^2, h, w]
            x = F.gelu(F.pixel_shuffle(x, r))  # [n, B * Cout, h * r, w * r]
        y = _grouped_conv(x, params["head.weight"], params["head.bias"], padding=0)  # [n, B * C, H, W]
        out = y.view(n, batch, c.out_dim, c.frame_height, c.frame_width).permute(1, 0, 3, 4, 2)
        out = out.reshape(batch, n, c.frame_height * c.frame_width * c.out_dim) + c.out_offset
        if not features:
            return out
        return out, x.view(n, batch, -1).transpose(0, 1)  # [B, n, H*W*C], [B, n, Cin*H*W] (a view)

    # -- frames as units -----------------------------------------------------------

    @property
    def samples_per_unit(self) -> int:
        """Grid samples one unit (a native frame) yields: sizes chunks of work in samples."""
        return self.config.frame_height * self.config.frame_width

    def grid_error(self, shape: tuple[int, ...], channels: int) -> str | None:
        c = self.config
        if len(shape) != 3 or tuple(shape[1:]) != (c.frame_height, c.frame_width) or channels != c.out_dim:
            return (f"NeRV makes {c.frame_height}x{c.frame_width} frames of {c.out_dim} channel(s); the signal is "
                    f"{'x'.join(map(str, shape))} with {channels} (give --res {c.frame_height} for square frames)")
        return None

    @staticmethod
    def _grid(shape: tuple[int, ...]) -> tuple[int, int, int]:
        if len(shape) != 3:
            raise ConfigError(None, f"a NeRV field renders a (frames, height, width) grid, not {tuple(shape)}")
        t, hh, ww = (int(s) for s in shape)
        return t, hh, ww

    def unit_count(self, shape: tuple[int, ...]) -> int:
        """Units of a (T, H, W) grid: its T frames."""
        return self._grid(shape)[0]

    def unit_size(self, shape: tuple[int, ...]) -> int:
        """Grid samples per unit of a (T, H, W) grid: H * W."""
        _, hh, ww = self._grid(shape)
        return hh * ww

    def unit_coords(self, shape: tuple[int, ...], start: int = 0, stop: int | None = None, *, device=None) -> Tensor:
        """Frame times of frames ``start .. stop-1`` of a (T, H, W) grid, pixel-centre on [-1, 1]: [n, 1]."""
        return grid_coords((self._grid(shape)[0],), start, stop, device=device)

    def to_units(self, values: Tensor) -> Tensor:
        """Targets [B, T, H, W, C] at the native frame size -> [B, T, H * W * C] (a view where possible)."""
        c = self.config
        if values.dim() != 5 or tuple(values.shape[2:]) != (c.frame_height, c.frame_width, c.out_dim):
            raise ConfigError(
                None,
                f"this NeRV field makes {c.frame_height}x{c.frame_width} frames of {c.out_dim} channels;"
                f" the signal is {list(values.shape[1:])} (frames, height, width, channels)",
            )
        return values.reshape(*values.shape[:2], -1)

    def from_units(self, out: Tensor, shape: tuple[int, ...]) -> Tensor:
        """Frames [B, n, H * W * C] -> grid samples [B, n * H' * W', C] of a (T', H', W') render.

        At another frame size each frame is resized (bilinear on pixel centres, antialiased
        when it shrinks): the decoder's output size is fixed. T' is not checked against n:
        the frames are whatever times the caller evaluated (see :meth:`unit_coords`).
        """
        c = self.config
        _, hh, ww = self._grid(shape)
        batch, n = out.shape[:2]
        frames = out.reshape(batch * n, c.frame_height, c.frame_width, c.out_dim)
        if (hh, ww) != (c.frame_height, c.frame_width):
            shrink = hh < c.frame_height or ww < c.frame_width
            frames = F.interpolate(
                frames.permute(0, 3, 1, 2), size=(hh, ww), mode="bilinear", align_corners=False, antialias=shrink
            ).permute(0, 2, 3, 1)
        return frames.reshape(batch, n * hh * ww, c.out_dim)

    def unit_scores(self, err: Tensor, h: Tensor) -> Tensor:
        """GradNCP's score of each frame: the norm of the head's gradient for that frame's loss.

        For the frame loss 0.5 * ||f - y||^2 the 1x1 head (W [C, Cin], b [C]) gets
        dW = E H^T and db = E 1, with E [C, P] the errors and H [Cin, P] the head's input
        over the frame's P pixels; the score is sqrt(||E H^T||_F^2 + ||E 1||^2).
        err [B, n, H*W*C], h [B, n, Cin*H*W] (as ``__call__`` returns them) -> [B, n].
        One batched matmul; memory O(B * n * C * Cin) beyond a copy of ``err``.
        """
        c = self.config
        batch, n = err.shape[:2]
        pixels = c.frame_height * c.frame_width
        # frames in (n, B) order: the order ``__call__`` stores its features in, so h needs no copy
        e = err.transpose(0, 1).reshape(n * batch, pixels, c.out_dim)  # [nB, P, C]
        f = h.transpose(0, 1).reshape(n * batch, self.features, pixels)  # [nB, Cin, P]
        grad_w = torch.bmm(f, e)  # [nB, Cin, C]
        grad_b = e.sum(dim=1)  # [nB, C]
        sq = grad_w.pow(2).sum(dim=(1, 2)) + grad_b.pow(2).sum(dim=1)
        return sq.sqrt().view(n, batch).transpose(0, 1)
