"""Schedule helpers shared by the fast kernels, and the column and row reductions their backwards use."""
from tinygrad import Tensor, UOp
from tinygrad.codegen.opt import Opt, OptOps
from tinygrad.uop.ops import AxisType, KernelInfo, Ops


def laid_out(x):
    """x as a contiguous buffer for a custom kernel: x itself where it is one already (a buffer, a kernel's or a
    function's output, or a reshape of one), else x.contiguous(). tinygrad copies a reshaped kernel output once more
    when asked for .contiguous()"""
    u = x.uop
    while u.op is Ops.RESHAPE:
        u = u.src[0]
    return x if u.op in (Ops.BUFFER, Ops.AFTER, Ops.GETTUPLE, Ops.CONTIGUOUS) else x.contiguous()


def upcast(n, most=8):
    """The largest tile length of a range of n (at most `most`) that divides n"""
    return next(u for u in (16, 8, 4, 2, 5, 3, 1) if u <= most and n % u == 0)


def upcasts(sizes, *amounts):
    """UPCAST opts from (range index, amount) pairs over ranges of these sizes; ranges of length 1 are folded away
    before opts apply, so they do not count, and an amount of 1 is no opt"""
    return tuple(Opt(OptOps.UPCAST, sum(n > 1 for n in sizes[:ax]), u) for ax, u in amounts if u > 1)


def reduce_range(n, axis):
    """A reduce range, or index 0 for a length-1 one (tinygrad folds that to a constant under its reduce, an error)"""
    return UOp.range(n, axis, AxisType.REDUCE) if n > 1 else 0


def sum_over(x, *ranges):
    ranges = [r for r in ranges if isinstance(r, UOp)]
    return x.reduce(*ranges, arg=Ops.ADD) if ranges else x


def _column_sums_kernel(C, A, *B):
    """C (Bt, N)[b, j] = the sum over m of A (Bt, M, N)[b, m, j], times B[b, m, j] when B is given: 8 columns a
    work-item (tinygrad's own column sums spread one column over a work-group)"""
    Bt, M, N = A.shape
    b, j, m = UOp.range(Bt, 0), UOp.range(N, 1), reduce_range(M, 2)
    x = A[b, m, j] * B[0][b, m, j] if B else A[b, m, j]
    name = f"column_{'dots' if B else 'sums'}_" + "_".join(map(str, (Bt, M, N)[Bt == 1:]))
    return C[b, j].store(sum_over(x, m)).end(b, j).sink(arg=KernelInfo(name=name, opts_to_apply=upcasts(
        (Bt, N), (1, upcast(N)))))


def column_sums(a, b=None):
    """a (..., M, N) [* b] summed over M -> (..., N); a and b are laid out contiguous first"""
    *lead, M, N = a.shape
    args = [z.reshape(-1, M, N) for z in ((a,) if b is None else (a, b))]
    out = Tensor.empty(args[0].shape[0], N, device=a.device).custom_kernel(*args, fxn=_column_sums_kernel)[0]
    return out.reshape(*lead, N)


def _row_sums_kernel(D, A, *B):
    """D (R,) = the sums of the rows of A (R, n), of A * B when B is given: 8 rows a work-item, 4 columns at a time"""
    (R, n) = A.shape
    r, c = UOp.range(R, 0), reduce_range(n, 1)
    opts = upcasts((R,), (0, upcast(R))) + ((Opt(OptOps.UNROLL, 0, 4),) if n % 4 == 0 else ())
    x = A[r, c] * B[0][r, c] if B else A[r, c]
    return D[r].store(sum_over(x, c)).end(r).sink(arg=KernelInfo(
        name=f"row_{'dots' if B else 'sums'}_{R}_{n}", opts_to_apply=opts))


def row_sums(a, b=None):
    """a (..., n) [* b] summed over its last axis -> (...,); a and b are laid out contiguous first"""
    n = a.shape[-1]
    args = [z.reshape(-1, n) for z in ((a,) if b is None else (a, b))]
    return Tensor.empty(args[0].shape[0], device=a.device).custom_kernel(*args, fxn=_row_sums_kernel)[0].reshape(a.shape[:-1])


def _row_centered_kernel(share, scale):
    def kernel(D, A, M, *B):
        """D (R,) = the sums over the rows of (A (R, n) - M[r // share] * scale) squared, or times B (R, n) when B is
        given: as the row sums, 8 rows a work-item, 4 columns at a time"""
        (R, n) = A.shape
        r, c = UOp.range(R, 0), reduce_range(n, 1)
        m = M[r // share] if share > 1 else M[r]
        a = A[r, c] - (m * scale if scale != 1.0 else m)
        opts = upcasts((R,), (0, upcast(R))) + ((Opt(OptOps.UNROLL, 0, 4),) if n % 4 == 0 else ())
        return D[r].store(sum_over(a * (B[0][r, c] if B else a), c)).end(r).sink(arg=KernelInfo(
            name=f"row_centered_{'dots' if B else 'squares'}_{R}_{n}", opts_to_apply=opts))
    return kernel


def row_centered(a, m, b=None, share=1, scale=1.0):
    """sum over the last axis of (a - m * scale) squared, or of (a - m * scale) * b: a (..., n), m (rows / share,),
    each entry of m the centre of `share` consecutive rows -> (...); laid out contiguous first"""
    n = a.shape[-1]
    args = [a.reshape(-1, n), m.reshape(-1)] + ([] if b is None else [b.reshape(-1, n)])
    out = Tensor.empty(args[0].shape[0], device=a.device).custom_kernel(*args, fxn=_row_centered_kernel(share, scale))[0]
    return out.reshape(a.shape[:-1])


def backward_grads(grads, call):
    """The gradient tuple of a tinygrad `function`'s grad_fxn: one entry per input of the call (None where it has
    none; call.src[0] is the output buffer)"""
    return tuple(g.uop if isinstance(g, Tensor) else g for g in grads) + (None,) * (len(call.src) - 1 - len(grads))
