"""bocpy.Matrix: every member, NumPy as the oracle, every error path.

The NumPy-oracle tests run on the main thread (NumPy does not load in worker
sub-interpreters); the tests at the end run user scripts in a subprocess to
check Matrix values in cowns, captures, messages, the noticeboard, a
PinnedCown and behaviors on workers.
"""

from __future__ import annotations

import copy
import math
import operator
import pickle

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from bocpy import Matrix

np = pytest.importorskip("numpy")

FINITE = st.floats(min_value=-1e6, max_value=1e6, allow_nan=False, allow_infinity=False)
ANY_FLOAT = st.floats(allow_nan=True, allow_infinity=True, width=64)
DIM = st.integers(min_value=1, max_value=7)


def arr(m: Matrix):
    """A NumPy copy of a Matrix (through the buffer protocol)."""
    return np.array(m, copy=True)


def mat(a) -> Matrix:
    """A Matrix copy of a 2-D NumPy array."""
    return Matrix(np.ascontiguousarray(a, dtype=float))


def same(m: Matrix, expected) -> None:
    """`m` equals `expected` exactly (NaN where NaN)."""
    expected = np.asarray(expected, dtype=float)
    assert m.shape == expected.shape
    np.testing.assert_array_equal(arr(m), expected)


def close(m: Matrix, expected) -> None:
    expected = np.asarray(expected, dtype=float)
    assert m.shape == expected.shape
    np.testing.assert_allclose(arr(m), expected, rtol=1e-12, atol=1e-12, equal_nan=True)


@st.composite
def matrices(draw, rows=DIM, columns=DIM, elements=ANY_FLOAT):
    r, c = draw(rows), draw(columns)
    return np.array(draw(st.lists(elements, min_size=r * c, max_size=r * c)), dtype=float).reshape(
        r, c
    )


@st.composite
def broadcast_pairs(draw, elements=ANY_FLOAT):
    """Two arrays whose shapes broadcast: equal, 1xN, Nx1, 1x1 either way."""
    r, c = draw(DIM), draw(DIM)
    a = draw(matrices(st.just(r), st.just(c), elements))
    shape = draw(st.sampled_from([(r, c), (1, c), (r, 1), (1, 1)]))
    b = draw(matrices(st.just(shape[0]), st.just(shape[1]), elements))
    return (b, a) if draw(st.booleans()) else (a, b)


# ------------------------------------------------------------ construction


def test_constructor_forms():
    same(Matrix(2, 3), np.zeros((2, 3)))
    same(Matrix(2, 2, 7), np.full((2, 2), 7.0))
    same(Matrix(2, 2, True), np.ones((2, 2)))
    same(Matrix(2, 2, [1, 2.5, 3, 4]), [[1, 2.5], [3, 4]])
    same(Matrix(1, 3, (1, 2, 3)), [[1, 2, 3]])
    same(Matrix(rows=1, columns=2, values=[5, 6]), [[5, 6]])


@pytest.mark.parametrize(
    ("args", "error", "text"),
    [
        ((0, 3), AssertionError, "> 0"),
        ((3, -1), AssertionError, "> 0"),
        ((2.0, 2), TypeError, "rows must be an int"),
        ((2, "2"), TypeError, "columns must be an int"),
        ((2, 2, [1, 2, 3]), TypeError, "list/tuple of MxN numbers"),
        ((2, 2, [1, "a", 3, 4]), TypeError, "list/tuple of MxN numbers"),
        ((2, 2, "abcd"), TypeError, "list/tuple of MxN numbers"),
        ((2, 2, [[1, 2], [3, 4]]), TypeError, "list/tuple of MxN numbers"),
        ((2**62, 2**62), ValueError, "too large"),
        ((3,), TypeError, "rows and columns"),
    ],
)
def test_constructor_errors(args, error, text):
    with pytest.raises(error, match=text):
        Matrix(*args)


def test_constructor_huge_int_value_is_an_error():
    with pytest.raises(OverflowError):
        Matrix(1, 1, 10**400)


def test_from_numpy_copies():
    a = np.arange(6, dtype=float).reshape(2, 3)
    for m in (Matrix(a), Matrix.from_buffer(a)):
        same(m, a)
        a[0, 0] = 99
        assert m[0, 0] == 0.0
        a[0, 0] = 0


@pytest.mark.parametrize(
    ("obj", "error", "text"),
    [
        (np.zeros((3, 4))[:, ::2], ValueError, "C-contiguous"),
        (np.zeros((2, 2), dtype=np.float32), ValueError, "float64"),
        (np.zeros((2, 2), dtype=np.int64), ValueError, "float64"),
        (np.zeros(4), ValueError, "2-D"),
        (np.zeros((2, 2, 2)), ValueError, "2-D"),
        (np.zeros((0, 3)), AssertionError, "> 0"),
        ("text", TypeError, "buffer protocol"),
        ([1.0, 2.0], TypeError, "buffer protocol"),
    ],
)
def test_from_buffer_errors(obj, error, text):
    with pytest.raises(error, match=text):
        Matrix.from_buffer(obj)


def test_from_memoryview_of_matrix():
    m = Matrix(2, 2, [1, 2, 3, 4])
    same(Matrix.from_buffer(memoryview(m)), arr(m))


# -------------------------------------------------------------- buffers


def test_buffer_shares_memory_both_ways():
    m = Matrix(2, 3, [1, 2, 3, 4, 5, 6])
    view = memoryview(m)
    assert (view.ndim, view.shape, view.strides, view.format) == (2, (2, 3), (24, 8), "d")
    assert not view.readonly and view.c_contiguous
    a = np.asarray(m)
    assert a.dtype == np.float64 and a.shape == (2, 3)
    a[1, 2] = 60.0
    assert m[1, 2] == 60.0
    m[0, 0] = -1.0
    assert a[0, 0] == -1.0 and view[0, 0] == -1.0
    view.release()


def test_buffer_export_blocks_reshaping_until_released():
    m = Matrix(2, 3)
    view = memoryview(m)
    with pytest.raises(BufferError):
        m.transpose(in_place=True)
    with pytest.raises(BufferError):
        m @= Matrix(3, 3)
    assert m.shape == (2, 3)
    m += 1  # element-wise in place keeps the block: allowed
    assert view[0, 0] == 1.0
    view.release()
    m.transpose(in_place=True)
    assert m.shape == (3, 2)
    m @= Matrix(2, 4)
    assert m.shape == (3, 4)


def test_numpy_array_keeps_matrix_alive():
    a = np.asarray(Matrix(2, 2, [1, 2, 3, 4]))
    assert a.sum() == 10.0


# ----------------------------------------------------------- properties


def test_properties():
    m = Matrix(2, 3, [1, 2, 3, 4, 5, 6])
    assert (m.rows, m.columns, m.shape, m.size, len(m)) == (2, 3, (2, 3), 6, 2)
    same(m.T, arr(m).T)
    assert m.length == pytest.approx(math.sqrt(91))
    assert m.acquired is True
    assert (m.x, m.y, m.z, m.w) == (1.0, 2.0, 3.0, 4.0)
    m.x, m.y, m.z, m.w = 10, 20.5, 30, 40
    same(m, [[10, 20.5, 30], [40, 5, 6]])


def test_component_errors():
    v = Matrix.vector([1, 2])
    with pytest.raises(IndexError, match=r"\.z"):
        _ = v.z
    with pytest.raises(IndexError, match=r"\.w"):
        v.w = 1
    with pytest.raises(TypeError, match="real number"):
        v.x = "q"
    with pytest.raises(AttributeError):
        v.rows = 3


def test_repr_and_str():
    assert repr(Matrix(1, 3, [1.5, -2.25, 1e20])) == "Matrix(1, 3, [1.5, -2.25, 1e+20])"
    assert repr(Matrix(1, 2, [1 / 3, float("nan")])) == "Matrix(1, 2, [0.333333, nan])"
    assert str(Matrix(2, 2, [1.5, -2.25, 1e-9, 3])) == "[[  1.5 -2.25]\n [1e-09     3]]"


def test_unhashable_and_truthy():
    with pytest.raises(TypeError, match="unhashable"):
        hash(Matrix(1, 1))
    assert bool(Matrix(1, 1))


# ------------------------------------------------------------ arithmetic


OPS = {
    "+": (lambda x, y: x + y, np.add, "add"),
    "-": (lambda x, y: x - y, np.subtract, "subtract"),
    "*": (lambda x, y: x * y, np.multiply, "multiply"),
    "/": (lambda x, y: x / y, np.divide, "divide"),
}


@settings(max_examples=60, deadline=None)
@given(pair=broadcast_pairs(), op=st.sampled_from(sorted(OPS)))
def test_elementwise_matches_numpy(pair, op):
    a, b = pair
    fn, ufunc, method = OPS[op]
    with np.errstate(all="ignore"):
        expected = ufunc(a, b)
    same(fn(mat(a), mat(b)), expected)
    same(getattr(mat(a), method)(mat(b)), expected)
    out = Matrix(*expected.shape)
    assert getattr(mat(a), method)(mat(b), out=out) is out
    same(out, expected)


@settings(max_examples=40, deadline=None)
@given(a=matrices(), s=ANY_FLOAT, op=st.sampled_from(sorted(OPS)))
def test_scalar_both_sides_matches_numpy(a, s, op):
    fn, ufunc, _ = OPS[op]
    with np.errstate(all="ignore"):
        same(fn(mat(a), s), ufunc(a, s))
        same(fn(s, mat(a)), ufunc(s, a))


@settings(max_examples=40, deadline=None)
@given(pair=broadcast_pairs(), op=st.sampled_from(sorted(OPS)))
def test_inplace_matches_numpy(pair, op):
    a, b = pair
    if np.broadcast_shapes(a.shape, b.shape) != a.shape:
        m = mat(a)
        with pytest.raises(ValueError, match="broadcast"):
            exec(f"m {op}= other", {"m": m, "other": mat(b)})
        same(m, a)  # untouched
        return
    m = mat(a)
    ident = id(m)
    ns = {"m": m, "other": mat(b)}
    exec(f"m {op}= other", ns)
    assert id(ns["m"]) == ident
    with np.errstate(all="ignore"):
        same(m, OPS[op][1](a, b))


def test_sequences_are_row_vectors():
    m = Matrix(2, 3, [1, 2, 3, 4, 5, 6])
    same(operator.add(m, [1, 2, 3]), arr(m) + np.array([1, 2, 3]))
    same(operator.sub((10, 20, 30), m), np.array([10, 20, 30]) - arr(m))
    with pytest.raises(ValueError, match="Dimension mismatch"):
        operator.add(m, [1, 2])
    with pytest.raises(ValueError, match="empty"):
        operator.add(m, [])
    with pytest.raises(TypeError, match="numbers"):
        operator.add(m, [1, "x", 3])


@pytest.mark.parametrize("other", ["x", None, object(), {1: 2}])
def test_arithmetic_with_unsupported_types(other):
    m = Matrix(1, 2)
    for fn in (
        lambda: m + other,
        lambda: other - m,
        lambda: m * other,
        lambda: m / other,
        lambda: m @ other,
    ):
        with pytest.raises(TypeError):
            fn()


def test_unsupported_operators():
    m = Matrix(1, 2, [1, 2])
    with pytest.raises(TypeError):
        m**2
    with pytest.raises(TypeError):
        m // 2


def test_method_argument_errors():
    m = Matrix(2, 3)
    with pytest.raises(TypeError, match="at most 1 positional"):
        m.add(m, m)
    with pytest.raises(TypeError, match="out must be a Matrix"):
        m.add(1, out=3)
    with pytest.raises(ValueError, match="out shape 1x1"):
        m.add(1, out=Matrix(1, 1))
    with pytest.raises(TypeError, match="unexpected keyword"):
        m.add(1, bogus=2)
    with pytest.raises(TypeError, match="missing required"):
        m.add()
    with pytest.raises(TypeError, match="other must be"):
        m.less("x")


@settings(max_examples=30, deadline=None)
@given(
    shapes=st.tuples(st.integers(1, 9), st.integers(1, 9), st.integers(1, 9)),
    data=st.data(),
)
def test_matmul_matches_numpy_small(shapes, data):
    m, k, n = shapes
    a = data.draw(matrices(st.just(m), st.just(k), FINITE))
    b = data.draw(matrices(st.just(k), st.just(n), FINITE))
    np.testing.assert_allclose(arr(mat(a) @ mat(b)), a @ b, rtol=1e-9, atol=1e-6)


@pytest.mark.parametrize(
    ("m", "k", "n"), [(70, 130, 90), (257, 300, 263), (6, 512, 8), (1, 600, 1)]
)
def test_matmul_blocked_kernel_matches_numpy(m, k, n):
    rng = np.random.default_rng(m * k * n)
    a, b = rng.standard_normal((m, k)), rng.standard_normal((k, n))
    np.testing.assert_allclose(arr(mat(a) @ mat(b)), a @ b, rtol=1e-10, atol=1e-10)


def test_matmul_forms_and_errors():
    a = Matrix(2, 3, [1, 2, 3, 4, 5, 6])
    same(a @ Matrix(3, 1, [1, 1, 1]), [[6], [15]])
    same([1, 1] @ a, [[5, 7, 9]])
    with pytest.raises(ValueError, match="N0 == M1"):
        a @ a
    with pytest.raises(TypeError):
        a @ 2
    b = a
    b @= a.T
    assert b is a and a.shape == (2, 2)
    same(a, [[14, 32], [32, 77]])


# ----------------------------------------------------------- unary ops

UNARY = {
    "negate": np.negative,
    "abs": np.abs,
    "sqrt": np.sqrt,
    "ceil": np.ceil,
    "floor": np.floor,
    "round": np.round,
}


@settings(max_examples=40, deadline=None)
@given(a=matrices(), name=st.sampled_from(sorted(UNARY)))
def test_unary_matches_numpy(a, name):
    with np.errstate(all="ignore"):
        expected = UNARY[name](a)
    m = mat(a)
    same(getattr(m, name)(), expected)
    same(m, a)
    out = Matrix(*a.shape)
    assert getattr(m, name)(out=out) is out
    same(out, expected)
    assert getattr(m, name)(in_place=True) is m
    same(m, expected)


def test_unary_operators_and_errors():
    m = Matrix(1, 4, [0.5, 1.5, 2.5, -0.5])
    same(-m, [[-0.5, -1.5, -2.5, 0.5]])
    same(abs(-m), np.abs(arr(m)))
    same(m.round(), [[0, 2, 2, -0.0]])
    with pytest.raises(ValueError, match="mutually exclusive"):
        m.negate(True, out=Matrix(1, 4))
    with pytest.raises(ValueError, match="out shape"):
        m.sqrt(out=Matrix(4, 1))


def test_clip():
    m = Matrix(1, 5, [float("nan"), 1, 2, 3, 4])
    same(m.clip(2, 3), [[np.nan, 2, 2, 3, 3]])
    same(m.clip(min=2), [[np.nan, 2, 2, 3, 4]])
    same(m.clip(max=2), [[np.nan, 1, 2, 2, 2]])
    with pytest.raises(ValueError, match="min and/or max"):
        m.clip()
    with pytest.raises(AssertionError, match="maxval < minval"):
        m.clip(4, 2)
    with pytest.raises(TypeError, match="real number"):
        m.clip("x")


def test_fma_and_scaled_add():
    a = Matrix(2, 3, [1, 2, 3, 4, 5, 6])
    same(a.fma(2, 1), arr(a) * 2 + 1)
    same(a.fma(Matrix(1, 3, [1, 2, 3]), Matrix(2, 1, [1, 2])), arr(a) * [1, 2, 3] + [[1], [2]])
    same(a.scaled_add(2, a), arr(a) + 2 * arr(a))
    same(a.scaled_add(Matrix(2, 1, [1, 2]), a), arr(a) + [[1], [2]] * arr(a))
    # fma rounds once: (1 + 2**-30)**2 - 1 keeps the 2**-60 term.
    x = Matrix(1, 1, [1 + 2**-30])
    assert (
        x.fma(x, -1.0)[0] == (1 + 2**-30) ** 2 - 1 + 2**-60 or x.fma(x, -1.0)[0] == 2**-29 + 2**-60
    )
    assert x.fma(x, 1.0, in_place=True) is x
    with pytest.raises(TypeError, match="c must be a Matrix or a real number"):
        a.fma(a, "x")
    with pytest.raises(ValueError, match="b shape 3x3 incompatible"):
        a.fma(Matrix(3, 3), 1)
    with pytest.raises(ValueError, match="x shape 1x3 does not match"):
        a.scaled_add(2, Matrix(1, 3))
    with pytest.raises(TypeError, match="x must be a Matrix"):
        a.scaled_add(2, 3)


# ------------------------------------------------------------ comparisons

MASKS = {
    "less": np.less,
    "less_equal": np.less_equal,
    "greater": np.greater,
    "greater_equal": np.greater_equal,
    "equal": np.equal,
    "not_equal": np.not_equal,
}


@settings(max_examples=40, deadline=None)
@given(
    pair=broadcast_pairs(st.sampled_from([0.0, 1.0, -1.0, np.nan, np.inf]) | FINITE),
    name=st.sampled_from(sorted(MASKS)),
)
def test_masks_match_numpy(pair, name):
    a, b = pair
    same(getattr(mat(a), name)(mat(b)), MASKS[name](a, b).astype(float))


def test_masks_with_scalars_and_sequences():
    m = Matrix(2, 3, [1, 2, 3, 4, 5, 6])
    same(m.less(3), (arr(m) < 3).astype(float))
    same(m.greater_equal([2, 2, 7]), (arr(m) >= [2, 2, 7]).astype(float))
    with pytest.raises(ValueError, match="empty"):
        m.less([])


def test_rich_comparison_is_lexicographic():
    a = Matrix(1, 3, [1, 2, 3])
    assert a == Matrix(1, 3, [1, 2, 3]) and a == [1, 2, 3] and not a != [1, 2, 3]
    assert a < Matrix(1, 3, [1, 2, 4]) and a <= Matrix(1, 3, [1, 2, 3])
    assert a > Matrix(1, 3, [0, 9, 9]) and not a > Matrix(1, 3, [1, 3, 0])
    assert a < 4 and a > 0.5 and not a < 1 and a != 1
    nan = Matrix(1, 2, [float("nan")] * 2)
    assert nan == nan.copy() and not nan < nan.copy() and not nan > nan.copy()
    assert (a == "x") is False and (a != None) is True  # noqa: E711
    assert (a == Matrix(3, 1, [1, 2, 3])) is False
    assert (a == [1, "x", 3]) is False and (a == []) is False
    assert a in [Matrix(1, 1), a.copy()]
    with pytest.raises(ValueError, match="same shape"):
        _ = a < Matrix(1, 1)
    with pytest.raises(TypeError):
        _ = a < "x"


def test_where_and_allclose_match_numpy():
    rng = np.random.default_rng(5)
    x, y = rng.standard_normal((3, 4)), rng.standard_normal((3, 4))
    mask = mat(x).less(0)
    same(Matrix.where(mask, mat(x), mat(y)), np.where(x < 0, x, y))
    same(Matrix.where(mask, 1, mat(y)), np.where(x < 0, 1, y))
    same(Matrix.where(Matrix(1, 2, [float("nan"), 0]), 1, 2), [[1, 2]])
    with pytest.raises(ValueError, match="mask shape"):
        Matrix.where(mask, [1, 2, 3], 0)
    with pytest.raises(ValueError, match="mask shape"):
        Matrix.where(mask, Matrix(1, 1), 0)
    with pytest.raises(TypeError, match="where\\(\\) operands"):
        Matrix.where(mask, "x", 0)
    with pytest.raises(TypeError, match="mask must be a Matrix"):
        Matrix.where(3, 1, 0)
    for delta in (0.0, 1e-9, 1e-3):
        assert Matrix.allclose(mat(x), mat(x + delta)) == np.allclose(x, x + delta)
    inf_nan = np.array([[np.inf, np.nan]])
    assert Matrix.allclose(mat(inf_nan), mat(inf_nan)) is False
    assert Matrix.allclose(mat(inf_nan), mat(inf_nan), equal_nan=True) is True
    assert Matrix.allclose(mat(x), Matrix(1, 1)) is False
    assert Matrix.allclose(mat(x), mat(x + 0.5), atol=1.0)
    with pytest.raises(TypeError, match="rhs must be a Matrix"):
        Matrix.allclose(mat(x), [1, 2])


# ------------------------------------------------------------- reductions

REDUCE = {
    "sum": np.sum,
    "mean": np.mean,
    "magnitude": lambda a, axis=None: np.sqrt(np.sum(a * a, axis=axis)),
    "magnitude_squared": lambda a, axis=None: np.sum(a * a, axis=axis),
    "min": np.nanmin,
    "max": np.nanmax,
}


@settings(max_examples=60, deadline=None)
@given(
    a=matrices(elements=FINITE),
    name=st.sampled_from(sorted(REDUCE)),
    axis=st.sampled_from([None, 0, 1, -1, -2]),
)
def test_reductions_match_numpy(a, name, axis):
    got = getattr(mat(a), name)(axis)
    expected = REDUCE[name](a, axis=axis)
    if axis is None:
        assert isinstance(got, float)
        assert got == pytest.approx(float(expected), rel=1e-9, abs=1e-6)
    else:
        keep = np.expand_dims(expected, axis)
        np.testing.assert_allclose(arr(got), keep, rtol=1e-9, atol=1e-6)


@settings(max_examples=40, deadline=None)
@given(a=matrices(elements=st.integers(-3, 3).map(float)), axis=st.sampled_from([None, 0, 1]))
def test_argmin_argmax_match_numpy(a, axis):
    for name in ("argmin", "argmax"):
        got = getattr(mat(a), name)(axis)
        expected = getattr(np, name)(a, axis=axis)
        if axis is None:
            assert got == int(expected) and isinstance(got, int)
        else:
            same(got, np.expand_dims(expected, axis))


def test_nan_rules_of_extremes():
    nan = float("nan")
    assert Matrix(1, 3, [nan, 1, 0]).min() == 0.0
    assert math.isnan(Matrix(1, 2, [nan, nan]).max())
    assert Matrix(1, 3, [nan, 1, 2]).argmin() == 0
    assert Matrix(1, 3, [1, nan, 0]).argmin() == 2


@pytest.mark.parametrize(
    ("axis", "error", "text"),
    [
        (2, ValueError, "-2, -1, 0, or 1"),
        (True, TypeError, "bool"),
        ("x", TypeError, "int or None"),
        (10**30, ValueError, "axis"),
    ],
)
def test_axis_errors(axis, error, text):
    with pytest.raises(error, match=text):
        Matrix(2, 2).sum(axis)


def test_vecdot():
    a = Matrix(2, 3, [1, 2, 3, 4, 5, 6])
    x = arr(a)
    assert a.vecdot(a) == 91.0
    same(a.vecdot(a, 0), (x * x).sum(axis=0, keepdims=True))
    same(a.vecdot(Matrix(1, 3, [1, 1, 1]), 1), x.sum(axis=1, keepdims=True))
    assert a.vecdot(Matrix(2, 1, [1, 1])) == 21.0
    assert Matrix.vector([1, 2, 3]).vecdot([1, 2, 3]) == 14.0
    with pytest.raises(ValueError, match="lhs 2x3 incompatible with rhs 3x2"):
        a.vecdot(Matrix(3, 2))
    with pytest.raises(TypeError, match="other must be"):
        a.vecdot(2)


# --------------------------------------------------------------- geometry


def test_cross_matches_numpy():
    rng = np.random.default_rng(3)
    u, v = rng.standard_normal((5, 3)), rng.standard_normal((5, 3))
    close(mat(u).cross(mat(v)), np.cross(u, v))
    close(mat(u.T).cross(mat(v.T)), np.cross(u, v).T)
    close(mat(u).cross(mat(v[:1])), np.cross(u, v[0]))
    close(mat(u[:3]).cross(mat(v[:3]), axis=0), np.cross(u[:3].T, v[:3].T).T)
    close(mat(u[:1]).cross(mat(v[:1].T)), np.cross(u[:1], v[:1]))
    p, q = rng.standard_normal((4, 2)), rng.standard_normal((4, 2))
    z = p[:, 0] * q[:, 1] - p[:, 1] * q[:, 0]
    close(mat(p).cross(mat(q)), z[:, None])
    close(mat(p.T).cross(mat(q.T)), z[None, :])
    assert Matrix.vector([1, 2]).cross(Matrix.vector([3, 4], as_column=True)) == -2.0
    same(Matrix(2, 2, [1, 2, 3, 4]).cross(Matrix.vector([1, 0])), [[-2], [-4]])
    same(Matrix(2, 2, [1, 2, 3, 4]).cross(Matrix.vector([1, 0]), 0), [[-3, -4]])
    with pytest.raises(ValueError, match="cross requires"):
        Matrix(4, 4).cross(Matrix(4, 4))
    with pytest.raises(ValueError, match="2xN batch lhs 2x5 incompatible with rhs 2x4"):
        Matrix(2, 5).cross(Matrix(2, 4))
    with pytest.raises(ValueError, match="2D vector lhs 1x2 incompatible"):
        Matrix(1, 2).cross(Matrix(1, 3))
    with pytest.raises(TypeError, match="other must be a Matrix"):
        Matrix(1, 2).cross([1, 2])


def test_angle_perpendicular_normalize():
    rng = np.random.default_rng(4)
    p = rng.standard_normal((5, 2))
    close(mat(p).angle(), np.arctan2(p[:, 1], p[:, 0])[:, None])
    close(mat(p.T).angle(), np.arctan2(p[:, 1], p[:, 0])[None, :])
    assert Matrix.vector([1, 1]).angle() == pytest.approx(math.pi / 4)
    same(Matrix(2, 2, [1, 1, 0, 1]).angle(0), [[0, math.pi / 4]])
    same(mat(p).perpendicular(), np.stack([-p[:, 1], p[:, 0]], axis=1))
    same(mat(p.T).perpendicular(), np.stack([-p[:, 1], p[:, 0]], axis=1).T)
    same(Matrix(2, 2, [1, 2, 3, 4]).perpendicular(0), [[-3, -4], [1, 2]])
    v = Matrix.vector([1, 2])
    assert v.perpendicular(in_place=True) is v
    same(v, [[-2, 1]])
    for fn in ("angle", "perpendicular"):
        with pytest.raises(ValueError, match=f"{fn} requires a 2D vector"):
            getattr(Matrix(3, 3), fn)()
    a = np.array([[3.0, 4.0], [0.0, 0.0]])
    close(mat(a).normalize(1), [[0.6, 0.8], [0, 0]])
    close(mat(a).normalize(0), [[1, 1], [0, 0]])
    close(mat(a).normalize(), a / 5)
    same(Matrix(2, 2).normalize(), np.zeros((2, 2)))
    m = mat(a)
    assert m.normalize(in_place=True) is m


def test_transpose():
    rng = np.random.default_rng(6)
    for shape in [(1, 1), (1, 5), (5, 1), (33, 70), (40, 40)]:
        a = rng.standard_normal(shape)
        same(mat(a).transpose(), a.T)
        m = mat(a)
        assert m.transpose(in_place=True) is m
        same(m, a.T)


# --------------------------------------------------------------- indexing

KEYS = [
    0,
    -1,
    (1, 2),
    (-1, -1),
    slice(None),
    slice(1, None),
    slice(None, None, -1),
    slice(0, 3, 2),
    (slice(None), 1),
    (0, slice(1, None)),
    (slice(1, 3), slice(0, 4, 2)),
    [2, 0, 2],
    ([1, 0], slice(None)),
    (slice(None), [3, 0]),
]


@pytest.mark.parametrize("key", KEYS, ids=repr)
def test_getitem_matches_numpy(key):
    a = np.arange(12, dtype=float).reshape(3, 4)
    got = mat(a)[key]
    expected = a[key]
    if isinstance(got, float):
        assert np.ndim(expected) == 0 and got == expected
    else:
        assert isinstance(got, Matrix)
        np.testing.assert_array_equal(arr(got).ravel(), np.ravel(expected))


def test_getitem_shapes():
    a = Matrix(3, 4)
    assert a[0].shape == (1, 4)
    assert a[:, 1].shape == (3, 1)
    assert a[0, 1:].shape == (1, 3)
    assert a[[0]].shape == (1, 4)
    assert Matrix(3, 1, [1, 2, 3])[1] == 2.0
    assert Matrix(1, 1, [4])[0] == 4.0
    assert Matrix(2, 1, [4, 5])[[True]] == Matrix(1, 1, [5])  # bools index as 0/1


@pytest.mark.parametrize(
    ("key", "error", "text"),
    [
        (3, IndexError, "row index 3 out of range"),
        (-4, IndexError, "out of range"),
        ((0, 4), IndexError, "column index 4"),
        (slice(5, 7), IndexError, "selects no rows"),
        ([], IndexError, "must not be empty"),
        ([5], IndexError, "row index 5"),
        ([0.5], TypeError, "integer is required"),
        ([2**70], OverflowError, "too large"),
        ("x", TypeError, "Matrix indices must be"),
        (1.0, TypeError, "Matrix indices must be"),
        ((0, 0, 0), KeyError, "two dimensions"),
        (([0], 0), IndexError, "take\\(\\) or put\\(\\)"),
        ((slice(0, 3), [0]), IndexError, "fancy indexing"),
        (([0], [0]), IndexError, "fancy indexing"),
        (10**30, IndexError, "cannot fit"),
    ],
)
def test_getitem_and_setitem_errors(key, error, text):
    m = Matrix(3, 4, list(range(12)))
    with pytest.raises(error, match=text):
        m[key]
    with pytest.raises(error, match=text):
        m[key] = 1.0
    same(m, np.arange(12.0).reshape(3, 4))


@pytest.mark.parametrize(
    ("key", "value"),
    [
        (0, 9),
        (0, [7, 8, 9, 10]),
        (0, Matrix(1, 4, [7, 8, 9, 10])),
        ((1, 2), 5),
        ((1, 2), Matrix(1, 1, [5])),
        ((slice(None), 1), [7, 8, 9]),
        ((slice(None), 1), Matrix(3, 1, [7, 8, 9])),
        ((slice(0, 2), slice(0, 2)), Matrix(2, 2, [1, 2, 3, 4])),
        (slice(None), Matrix(1, 4, [1, 2, 3, 4])),
        ([2, 0], Matrix(2, 4, list(range(8)))),
        ((slice(None), [3, 1]), 0.5),
        (slice(None, None, 2), -1),
    ],
    ids=repr,
)
def test_setitem_matches_numpy(key, value):
    a = np.arange(12, dtype=float).reshape(3, 4)
    m = mat(a)
    m[key] = value
    np_value = arr(value) if isinstance(value, Matrix) else np.asarray(value, dtype=float)
    expected = a.copy()
    target_shape = np.shape(expected[key])
    expected[key] = (
        np_value.reshape(target_shape) if np_value.size == np.prod(target_shape) else np_value
    )
    same(m, expected)


def test_setitem_value_errors_leave_matrix_unchanged():
    m = Matrix(2, 3, [1, 2, 3, 4, 5, 6])
    with pytest.raises(ValueError, match="cannot assign 2 values"):
        m[0] = [7, 8]
    with pytest.raises(ValueError, match="cannot assign 3x1 matrix"):
        m[0] = Matrix(3, 1, [7, 8, 9])
    with pytest.raises(TypeError, match="Invalid value"):
        m[0, 1] = "x"
    with pytest.raises(TypeError, match="Invalid value"):
        m[0] = None
    with pytest.raises(TypeError, match="cannot be deleted"):
        del m[0]
    same(m, [[1, 2, 3], [4, 5, 6]])


def test_setitem_from_itself_reads_before_writing():
    m = Matrix(2, 2, [1, 2, 3, 4])
    m[[1, 0]] = m
    same(m, [[3, 4], [1, 2]])


def test_iteration():
    assert [r.shape for r in Matrix(3, 2)] == [(1, 2)] * 3
    assert list(Matrix(3, 1, [1, 2, 3])) == [1.0, 2.0, 3.0]
    assert [list(r) for r in Matrix(2, 2, [1, 2, 3, 4])] == [
        [Matrix.vector([1, 2])],
        [Matrix.vector([3, 4])],
    ]


def test_take_and_put():
    a = np.arange(12, dtype=float).reshape(3, 4)
    m = mat(a)
    same(m.take([2, 0, 2]), a[[2, 0, 2]])
    same(m.take((True,)), a[[1]])
    same(m.take([-1, 1], axis=1), a[:, [-1, 1]])
    assert m.put([0, 0], 1.0) is m
    expected = a.copy()
    expected[0] = 1.0
    same(m, expected)
    value = np.arange(8.0).reshape(2, 4)
    m = mat(a)
    m.put([0, 0], mat(value), accumulate=True)
    expected = a.copy()
    np.add.at(expected, [0, 0], value)
    same(m, expected)
    m = mat(a)
    m.put([3, 3], 1.0, axis=1, accumulate=True)
    expected = a.copy()
    expected[:, 3] += 2
    same(m, expected)


@pytest.mark.parametrize(
    ("call", "error", "text"),
    [
        (lambda m: m.take([]), IndexError, "must not be empty"),
        (lambda m: m.take([9]), IndexError, "row index 9"),
        (lambda m: m.take([9], axis=1), IndexError, "column index 9"),
        (lambda m: m.take([0], axis=2), KeyError, "must be 0 or 1"),
        (lambda m: m.take([1.0]), TypeError, "integer is required"),
        (lambda m: m.take(0), TypeError, "list or a tuple"),
        (lambda m: m.take([2**70]), OverflowError, "too large"),
        (lambda m: m.put([0], "x"), TypeError, "Matrix or a real number"),
        (lambda m: m.put([0], [1, 2, 3, 4]), TypeError, "Matrix or a real number"),
        (
            lambda m: m.put((1,), Matrix(1, 2)),
            ValueError,
            "cannot assign 1x2 matrix to a selection of shape 1x4",
        ),
        (lambda m: m.put([0, 9], 1), IndexError, "row index 9"),
        (lambda m: m.put([0], 1, axis=-1), KeyError, "must be 0 or 1"),
    ],
)
def test_take_put_errors(call, error, text):
    m = Matrix(3, 4, list(range(12)))
    with pytest.raises(error, match=text):
        call(m)
    same(m, np.arange(12.0).reshape(3, 4))


# ----------------------------------------------------------- constructors


def test_class_constructors():
    same(Matrix.zeros((2, 3)), np.zeros((2, 3)))
    same(Matrix.ones([1, 2]), np.ones((1, 2)))
    same(Matrix.vector([1, 2]), [[1, 2]])
    same(Matrix.vector([1, 2], as_column=True), [[1], [2]])
    same(Matrix.vector((1, 2), True), [[1], [2]])
    a, b = np.arange(6.0).reshape(2, 3), np.arange(3.0).reshape(1, 3)
    same(Matrix.concat([mat(a), mat(b)]), np.concatenate([a, b]))
    same(Matrix.concat([mat(a), [7, 8, 9]]), np.concatenate([a, [[7, 8, 9]]]))
    same(Matrix.concat((mat(a), mat(a)), axis=1), np.concatenate([a, a], axis=1))
    same(Matrix.concat([[1, 2], [3, 4]], 1), [[1, 3], [2, 4]])


@pytest.mark.parametrize(
    ("call", "error", "text"),
    [
        (lambda: Matrix.zeros((0, 2)), AssertionError, "> 0"),
        (lambda: Matrix.zeros(2), TypeError, "size must be a \\(rows, columns\\) tuple"),
        (lambda: Matrix.ones((1, 2, 3)), TypeError, "size must be"),
        (lambda: Matrix.vector([]), ValueError, "empty"),
        (lambda: Matrix.vector(["a"]), TypeError, "numbers"),
        (lambda: Matrix.vector(3), TypeError, "list/tuple of numbers"),
        (lambda: Matrix.concat([]), ValueError, "at least one"),
        (lambda: Matrix.concat([Matrix(1, 2)], 2), KeyError, "must be 0 or 1"),
        (
            lambda: Matrix.concat([Matrix(2, 3), Matrix(1, 2)]),
            AssertionError,
            "same number of columns",
        ),
        (
            lambda: Matrix.concat([Matrix(2, 3), Matrix(1, 2)], 1),
            AssertionError,
            "same number of rows",
        ),
        (lambda: Matrix.concat([1, 2]), TypeError, "item 0 must be"),
        (lambda: Matrix.concat(5), TypeError, "list or tuple"),
        (lambda: Matrix.uniform("x", 1), TypeError, "minval must be a real number"),
        (lambda: Matrix.normal(0, 1, (2,)), TypeError, "size must be"),
        (lambda: Matrix.seed("x"), TypeError, "must be an int"),
    ],
)
def test_class_constructor_errors(call, error, text):
    with pytest.raises(error, match=text):
        call()


def test_random_draws():
    Matrix.seed(42)
    first = Matrix.uniform(2.0, 3.0, (50, 40))
    Matrix.seed(42)
    assert first == Matrix.uniform(2.0, 3.0, (50, 40))
    x = arr(first)
    assert x.min() >= 2.0 and x.max() < 3.0 and abs(x.mean() - 2.5) < 0.05
    n = arr(Matrix.normal(1.0, 2.0, (200, 100)))
    assert abs(n.mean() - 1.0) < 0.1 and abs(n.std() - 2.0) < 0.1
    assert isinstance(Matrix.uniform(), float) and 0.0 <= Matrix.uniform() < 1.0
    assert isinstance(Matrix.normal(None, None), float)
    assert Matrix.uniform(size=(1, 3)).shape == (1, 3)
    Matrix.seed(-1)
    Matrix.seed(2**70)


# ------------------------------------------------------------- copy, pickle


def test_copy_and_pickle():
    m = Matrix(2, 3, [1, 2, 3, 4, float("nan"), float("inf")])
    for c in (m.copy(), copy.copy(m), copy.deepcopy(m), pickle.loads(pickle.dumps(m))):
        assert c is not m and c.shape == m.shape
        same(c, arr(m))
        c[0, 0] = 100
        assert m[0, 0] == 1.0


def test_rebuild_rejects_bad_data():
    from bocpy import _core

    with pytest.raises(ValueError, match="cannot hold a 2x2"):
        _core._matrix_rebuild(2, 2, b"\0" * 8)
    with pytest.raises(TypeError):
        _core._matrix_rebuild(2, 2, "text")


# ------------------------------------------------- across interpreters (scripts)


def test_matrix_in_cowns_captures_behaviors_on_workers(run_script):
    proc = run_script(
        """
        from bocpy import Cown, Matrix, when, wait

        acc = Cown(Matrix.zeros((2, 2)))
        step = Matrix(2, 2, [1, 2, 3, 4])
        for i in range(20):
            @when(acc)
            def add(acc, i=i):
                acc.value += step * 1.0   # `step` crosses as a capture
                acc.value[0, 0] += 0.0

        @when(acc)
        def finish(acc):
            m = acc.value
            return (m.shape, m.sum(), (m @ m.T).sum(), type(m).__name__)

        wait()
        print(finish.unwrap())
        print(acc.unwrap())
        """
    )
    assert proc.returncode == 0, proc.stderr
    out = proc.stdout.splitlines()
    assert out[0] == "((2, 2), 200.0, 20800.0, 'Matrix')"
    assert out[1:] == ["[[20 40]", " [60 80]]"]


def test_matrix_in_messages_noticeboard_and_pinned_cown(run_script):
    proc = run_script(
        """
        from bocpy import (Cown, Matrix, PinnedCown, notice_read, notice_seed,
                           receive, send, wait, when)

        notice_seed("m", Matrix.vector([1, 2, 3]))
        board = PinnedCown(Matrix.zeros((1, 3)))
        c = Cown(None)

        @when(c)
        def produce(c):
            seen = notice_read("m")
            send("matrix", seen * 2)
            c.value = Matrix.concat([seen, seen])

        @when(c, board)
        def write_back(c, board):
            board.value += c.value.sum(axis=0)

        wait()
        tag, m = receive("matrix", 10)
        print(tag, repr(m))
        m = board.unwrap()
        print(repr(m), m.acquired)
        """
    )
    assert proc.returncode == 0, proc.stderr
    assert proc.stdout.splitlines() == [
        "matrix Matrix(1, 3, [2, 4, 6])",
        "Matrix(1, 3, [2, 4, 6]) True",
    ]


def test_matrix_errors_inside_a_behavior_reach_the_result(run_script):
    proc = run_script(
        """
        from bocpy import Cown, Matrix, when, wait

        c = Cown(Matrix(2, 3))

        @when(c)
        def bad(c):
            return c.value @ c.value

        wait()
        try:
            bad.unwrap()
        except ValueError as e:
            print("ValueError", "N0 == M1" in str(e))
        """
    )
    assert proc.returncode == 0, proc.stderr
    assert proc.stdout.strip() == "ValueError True"
