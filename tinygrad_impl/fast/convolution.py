"""conv2d (groups 1, square kernels) on a CPU: forward, input gradient and weight gradient.

OpenCL on a CPU: direct convolutions as OpenCL C programs, no patch matrix. The forward reads the zero-padded input
in place: each work-item computes up to 16 output channels by a row segment of up to 16 pixels, one float16
accumulator per channel, and per input channel and tap one vector load (shifted along the row for each tap) times
each channel's weight broadcast. The input gradient of a stride-1 conv is the same kernel on the padded gradient with
the kernel flipped and its channel axes swapped; for a strided conv the gradient is first spread out with zeros (a
stride-1 conv over the gaps). The weight gradient sums g times the shifted input over batch and pixels, vectorized
along the row, each work-item a few output channels by one input channel by all taps.

tinygrad's CPU backend: the patches (im2col, a gather tinygrad differentiates) times the weights as the fast linear,
whose backward gives the weight gradient and the patches' gradient (summed back into place by tinygrad).
"""
import functools

from tinygrad import Tensor

from . import on_opencl
from .matmul import linear, opencl_program
from .reduce import column_sums, laid_out, row_sums


def out_size(n, k, stride, padding):
    """The output length of a conv along an axis of length n"""
    return (n + 2 * padding - k) // stride + 1


# ----------------------------------------------------------------------------
# OpenCL C sources
# ----------------------------------------------------------------------------

def _vec(width):
    return f"float{width}" if width > 1 else "float"


def _load(ptr, width, stride):
    """OpenCL C: `width` floats at ptr, ptr + stride, ... as one vector (stride 1 or 2; stride 2 reads one float past
    the last one it keeps)"""
    if width == 1:
        return f"({ptr})[0]"
    if stride == 1:
        return f"vload{width}(0, {ptr})"
    if width == 16:
        return f"(float16)(vload16(0, {ptr}).even, vload16(0, {ptr} + 16).even)"
    return f"vload{2 * width}(0, {ptr}).even"


def _hsum(x, width):
    """OpenCL C: the sum of a vector's elements, halves added pairwise"""
    while width > 1:
        x, width = f"(({x}).lo + ({x}).hi)", width // 2
    return x


def _rows_of(channels, most=16):
    """The most output channels a work-item computes: the largest count up to `most` that divides"""
    return max(r for r in range(1, most + 1) if channels % r == 0)


def _row_tile(HO, WO):
    """(width, ny): a work-item's pixels, `width` along a row (the largest of 16, 8, 4, 2, 1 that divides WO) by ny
    rows, so narrow maps still fill a float16 (8x8 maps: 2 rows of 8)"""
    width = next(w for w in (16, 8, 4, 2, 1) if WO % w == 0)
    ny = next((n for n in (4, 2) if width > 1 and width * n <= 16 and HO % n == 0), 1)
    return width, ny


def _rows_load(ptr, pitch, width, ny, stride):
    """OpenCL C: `width` floats of each of ny rows `pitch` apart as one vector of width * ny"""
    parts = [_load(f"{ptr} + {q * pitch}" if q else ptr, width, stride) for q in range(ny)]
    return parts[0] if ny == 1 else f"({_vec(width * ny)})({', '.join(parts)})"


def _part(x, q, width, ny):
    """OpenCL C: row q's `width` elements of a vector of ny rows"""
    return x if ny == 1 else f"({x}).s{''.join('0123456789abcdef'[q * width + e] for e in range(width))}"


def _conv_source(name, B, CIN, HP, WP, COUT, HO, WO, K, S, has_bias, rows, width, ny, flipped, unread=False):
    """Y (B, COUT, HO, WO) = the conv of XP (B, CIN, HP, WP) (already padded), stride S, with the weights Wt
    (COUT, CIN, K, K) [+ bias]; with `flipped`, Wt is (CIN, COUT, K, K) and read with its taps flipped (the input
    gradient's kernel, read in place). A work-item: `rows` output channels by `ny` rows of `width` pixels. With
    `unread`, one more buffer argument the kernel does not read (the unpadded input, passed for the backward)"""
    vec, KK, nv = _vec(width * ny), K * K, width * ny
    r_step, c_step = (KK, COUT * KK) if flipped else (CIN * KK, KK)
    tap = (lambda i, j: (K - 1 - i) * K + K - 1 - j) if flipped else (lambda i, j: i * K + j)
    lines = [f"__kernel void {name}(__global float* Y, __global const float* XP, __global const float* Wt"
             f"{', __global const float* bias' if has_bias else ''}{', __global const float* unread' if unread else ''}) {{",
             f"  int t = get_global_id(0), co = get_global_id(1) * {rows}, n = get_global_id(2);",
             f"  int y = t / {WO // width} * {ny}, x0 = (t % {WO // width}) * {width};",
             f"  __global const float* xb = XP + n*{CIN * HP * WP} + y*{S * WP} + x0*{S};",
             f"  __global const float* wb = Wt + co*{r_step};",
             *(f"  {vec} acc{r} = 0.0f;" for r in range(rows)),
             f"  for (int c = 0; c < {CIN}; c++, xb += {HP * WP}, wb += {c_step}) {{"]
    for i in range(K):
        for j in range(K):
            lines.append(f"    {{ {vec} v = {_rows_load(f'xb + {i * WP + j}', S * WP, width, ny, S)};")
            lines += [f"      acc{r} = fma(({vec})wb[{r * r_step + tap(i, j)}], v, acc{r});" for r in range(rows)]
            lines.append("    }")
    lines += ["  }", f"  __global float* yb = Y + ((n*{COUT} + co)*{HO} + y)*{WO} + x0;"]
    for r in range(rows):
        value = f"(acc{r} + ({vec})bias[co + {r}])" if has_bias else f"acc{r}"
        for q in range(ny):
            at, part = r * HO * WO + q * WO, _part(value, q, width, ny)
            lines.append(f"  vstore{width}({part}, 0, yb + {at});" if width > 1 else f"  yb[{at}] = {part};")
    assert nv in (1, 2, 4, 8, 16)
    return "\n".join(lines + ["}"])


def _conv_dw_source(name, B, CIN, HP, WP, COUT, HO, WO, K, S, rows, cols, width, ny, images):
    """P (B/images, COUT, CIN, K, K) = sums over `images` images n, and over y, x of G (B, COUT, HO, WO)[n, co, y, x]
    * XP (B, CIN, HP, WP)[n, c, S*y + i, S*x + j]: a work-item `rows` output channels by `cols` input channels by all
    K*K taps of one block of images (whose maps stay in cache), each a vector of partial sums over ny rows of
    `width` pixels"""
    vec, KK, nv = _vec(width * ny), K * K, width * ny
    accs = [(r, e, i, j) for r in range(rows) for e in range(cols) for i in range(K) for j in range(K)]
    lines = [f"__kernel void {name}(__global float* P, __global const float* G, __global const float* XP) {{",
             f"  int c = get_global_id(0) * {cols}, co = get_global_id(1) * {rows}, blk = get_global_id(2);",
             *(f"  {vec} a{r}_{e}_{i}_{j} = 0.0f;" for r, e, i, j in accs),
             f"  for (int n = blk*{images}; n < (blk + 1)*{images}; n++) for (int y = 0; y < {HO}; y += {ny}) {{",
             f"    __global const float* gr = G + ((n*{COUT} + co)*{HO} + y)*{WO};",
             f"    __global const float* xr = XP + ((n*{CIN} + c)*{HP} + y*{S})*{WP};",
             f"    for (int x0 = 0; x0 < {WO}; x0 += {width}) {{",
             *(f"      {vec} g{r} = {_rows_load(f'gr + x0 + {r * HO * WO}', WO, width, ny, 1)};" for r in range(rows))]
    for e in range(cols):
        for i in range(K):
            for j in range(K):
                at = f"xr + x0*{S} + {e * HP * WP + i * WP + j}"
                lines.append(f"      {{ {vec} v = {_rows_load(at, S * WP, width, ny, S)};")
                lines += [f"        a{r}_{e}_{i}_{j} = fma(g{r}, v, a{r}_{e}_{i}_{j});" for r in range(rows)]
                lines.append("      }")
    lines += ["    }", "  }", f"  __global float* pb = P + blk*{COUT * CIN * KK} + co*{CIN * KK} + c*{KK};"]
    lines += [f"  pb[{r * CIN * KK + e * KK + i * K + j}] = {_hsum(f'a{r}_{e}_{i}_{j}', nv)};" for r, e, i, j in accs]
    return "\n".join(lines + ["}"])


def _conv_kernel(k, stride, has_bias, flipped, unread=False):
    def kernel(Y, XP, Wt, *rest):
        B, COUT, HO, WO = Y.shape
        _, CIN, HP, WP = XP.shape
        rows, (width, ny) = _rows_of(COUT), _row_tile(HO, WO)
        name = f"conv{k}x{k}{f's{stride}' if stride > 1 else ''}{'_dx' if flipped else ''}_{B}_{CIN}_{HO}_{WO}_{COUT}"
        source = _conv_source(name, B, CIN, HP, WP, COUT, HO, WO, k, stride, has_bias, rows, width, ny, flipped, unread)
        return opencl_program(name, source, (Y, XP, Wt, *rest), (HO * WO // (width * ny), COUT // rows, B),
                              ops=2 * B * COUT * HO * WO * CIN * k * k,
                              moved=4 * (B * CIN * HP * WP + COUT * CIN * k * k + B * COUT * HO * WO))
    return kernel


def _conv_dw_kernel(k, stride, images):
    def kernel(P, G, XP):
        blocks, COUT, CIN = P.shape[:3]
        B, _, HO, WO = G.shape
        HP, WP = XP.shape[2:]
        # about 16 accumulators: 3x3 kernels 2 output channels by 1 input channel, 1x1 kernels 4 by 4
        cols = _rows_of(CIN, 4) if k == 1 else 1
        rows = _rows_of(COUT, max(1, 18 // (k * k * cols)))
        width, ny = _row_tile(HO, WO)
        name = f"conv{k}x{k}{f's{stride}' if stride > 1 else ''}_dw_{B}_{CIN}_{HO}_{WO}_{COUT}"
        source = _conv_dw_source(name, B, CIN, HP, WP, COUT, HO, WO, k, stride, rows, cols, width, ny, images)
        return opencl_program(name, source, (P, G, XP), (CIN // cols, COUT // rows, blocks),
                              ops=2 * B * COUT * HO * WO * CIN * k * k,
                              moved=4 * (B * CIN * HP * WP + COUT * CIN * k * k * blocks + B * COUT * HO * WO))
    return kernel


def _conv_dw(g, xp, k, stride, images=None):
    """The weight gradient (Cout, Cin, k, k) from g (B, Cout, Ho, Wo) and the padded input: per block of images
    (as few as make 1024 pixels), then summed over the blocks"""
    B, Cout, Ho, Wo = g.shape
    Cin = xp.shape[1]
    images = images or next(n for n in range(1, B + 1) if B % n == 0 and (n * Ho * Wo >= 1024 or n == B))
    part = Tensor.empty(B // images, Cout, Cin, k, k, device=g.device).custom_kernel(
        g, xp, fxn=_conv_dw_kernel(k, stride, images))[0]
    return column_sums(part.reshape(B // images, -1)).reshape(Cout, Cin, k, k)


# ----------------------------------------------------------------------------
# The convs on OpenCL, with their own backward
# ----------------------------------------------------------------------------

def _pad_source(name, H, W, HP, WP, top, left, S):
    """Y (n, HP, WP): X (n, H, W) with `top` rows and `left` columns of zeros before, zeros after, and S - 1 zeros
    between neighbouring rows and columns (a strided conv's gradient spread out); a work-item a whole map"""
    span = (W - 1) * S + 1
    inner = (f"for (int x = 0; x < {W}; x++) yr[{left} + x] = xr[x];" if S == 1 else
             f"for (int x = 0; x < {span}; x++) yr[{left} + x] = (x % {S}) ? 0.0f : xr[x / {S}];")
    return "\n".join([
        f"__kernel void {name}(__global float* Y, __global const float* X) {{",
        "  int m = get_global_id(0);",
        f"  for (int yy = 0; yy < {HP}; yy++) {{",
        f"    __global float* yr = Y + (m*{HP} + yy)*{WP};",
        f"    int sy = yy - {top};",
        f"    if (sy < 0 || sy % {S} != 0 || sy / {S} >= {H}) {{ for (int x = 0; x < {WP}; x++) yr[x] = 0.0f; continue; }}",
        f"    __global const float* xr = X + (m*{H} + sy / {S})*{W};",
        f"    for (int x = 0; x < {left}; x++) yr[x] = 0.0f;",
        f"    {inner}",
        f"    for (int x = {left + span}; x < {WP}; x++) yr[x] = 0.0f;",
        "  }", "}"])


def _pad_kernel(top, left, stride):
    def kernel(Y, X):
        (B, C, HP, WP), (H, W) = Y.shape, X.shape[2:]
        name = f"pad_{B}_{C}_{H}_{W}_{HP}_{WP}{f'_s{stride}' if stride > 1 else ''}"
        return opencl_program(name, _pad_source(name, H, W, HP, WP, top, left, stride), (Y, X), (B * C, 1, 1),
                              ops=0, moved=4 * B * C * (H * W + HP * WP))
    return kernel


def _spread(x, top, left, out_hw, stride=1):
    """x (B, C, H, W) laid out (B, C, *out_hw) with top / left zeros before, zeros after and stride - 1 zeros between
    (a copy kernel: tinygrad's own pad ran at a tenth of a plain copy's speed)"""
    return Tensor.empty(*x.shape[:2], *out_hw, device=x.device).custom_kernel(
        laid_out(x), fxn=_pad_kernel(top, left, stride))[0]


def _pad(x, k, stride, padding, out_hw):
    """x (B, C, H, W) zero-padded for a conv with output (Ho, Wo): `padding` before, as much after as the last
    output reads (a strided vector load reads one more float)"""
    Ho, Wo = out_hw
    return _spread(x, padding, padding, (stride * (Ho - 1) + k, stride * (Wo - 1) + k + (stride > 1)))


def _direct(xp, w, b, stride, out_hw, flipped=False):
    """The conv of the padded xp with w (Cout, Cin, k, k) [+ b] -> (B, Cout, Ho, Wo); with `flipped` the conv with
    w's taps flipped and its channel axes swapped, -> (B, Cin, Ho, Wo) (the input gradient of a stride-1 conv)"""
    k = w.shape[-1]
    y = Tensor.empty(xp.shape[0], w.shape[1 if flipped else 0], *out_hw, device=xp.device)
    return y.custom_kernel(xp, w, *([] if b is None else [b]), fxn=_conv_kernel(k, stride, b is not None, flipped))[0]


def _conv_grad(g, call, stride, padding, has_bias):
    """The gradients of the conv kernel's buffers (Y, XP, Wt[, bias], X): dx, the stride-1 conv of g (spread out with
    zeros for a strided conv) with the kernel flipped, read in place; dw, the dw kernel on the padded input; db, g
    summed over batch and pixels. None for Y and XP: the whole gradient goes to X (the pad kernel has none)"""
    xp, w, x = Tensor(call.src[2]), Tensor(call.src[3]), Tensor(call.src[-1])
    B, Cin, H, W = x.shape
    Cout, _, k, _ = w.shape
    g = laid_out(Tensor(g))
    Ho, Wo = g.shape[2:]
    # g[n, co, y, x] at (stride*y, stride*x) with zeros between, padded by k - 1 - padding before
    gp = _spread(g, k - 1 - padding, k - 1 - padding, (H + k - 1, W + k - 1), stride)
    dx = _direct(gp, w, None, 1, (H, W), flipped=True)
    dw = _conv_dw(g, xp, k, stride)
    db = (column_sums(row_sums(g.reshape(B * Cout, Ho * Wo)).reshape(B, Cout)).uop,) if has_bias else ()
    return (None, None, dw.uop) + db + (dx.uop,)


def _conv_cl(x, w, b, stride, padding):
    """The OpenCL conv: the pad kernel, then the conv kernel, whose own backward (a custom kernel's grad_fxn, so its
    output is not copied as a tinygrad `function`'s would be) computes the gradients of x, w and b"""
    k = w.shape[-1]
    x = laid_out(x)
    out_hw = tuple(out_size(n, k, stride, padding) for n in x.shape[2:])
    xp = _pad(x, k, stride, padding, out_hw)
    y = Tensor.empty(x.shape[0], w.shape[0], *out_hw, device=x.device)
    return y.custom_kernel(xp, w.contiguous(), *([] if b is None else [b]), x,
                           fxn=_conv_kernel(k, stride, b is not None, False, unread=True),
                           grad_fxn=functools.partial(_conv_grad, stride=stride, padding=padding,
                                                      has_bias=b is not None))[0]


# ----------------------------------------------------------------------------
# tinygrad's CPU backend: im2col and the fast linear
# ----------------------------------------------------------------------------

def im2col(x, k, stride, padding):
    """x (B, C, H, W) -> its k x k patches channels-last, (B, Ho, Wo, C*k*k), ordered (c, i, j) as w.reshape(Cout, -1)
    is; a gather tinygrad differentiates (its gradient sums the patches back into place, col2im)"""
    B, C, H, W = x.shape
    Ho, Wo = out_size(H, k, stride, padding), out_size(W, k, stride, padding)
    if k == 1 and padding == 0:
        return x[:, :, ::stride, ::stride].permute(0, 2, 3, 1)
    xp = x.pad(((0, 0), (0, 0), (padding, padding), (padding, padding)))
    taps = [xp[:, :, i:i + stride * (Ho - 1) + 1:stride, j:j + stride * (Wo - 1) + 1:stride]
            for i in range(k) for j in range(k)]                                  # k*k x (B, C, Ho, Wo)
    return Tensor.stack(*taps, dim=4).permute(0, 2, 3, 1, 4).reshape(B, Ho, Wo, C * k * k)


def conv2d(x, w, b=None, stride=1, padding=0):
    """x (B, Cin, H, W), w (Cout, Cin, k, k), groups 1 -> (B, Cout, Ho, Wo); on OpenCL stride 1 or 2 and
    padding < k direct, otherwise the patches times w as the fast linear"""
    Cout, _, k, _ = w.shape
    if on_opencl(x.device) and stride in (1, 2) and padding < k:
        return _conv_cl(x, w, b, stride, padding)
    return linear(im2col(x, k, stride, padding), w.reshape(Cout, -1), b).permute(0, 3, 1, 2)
