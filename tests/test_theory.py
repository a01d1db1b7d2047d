"""sgdyn.theory against independent references: closed forms, series, scipy."""

import math
import warnings

import numpy as np
import pytest
from scipy import integrate, special, stats

from sgdyn import theory as th


def ou_exit_series(theta, sigma, r):
    """Mean exit time of dX = -theta X dt + sigma dB from (-r, r) started at 0, by series.

    T = (2/theta) sum_n 2^n R^(2n+2) / ((2n+1)!! (2n+2)),  R^2 = theta r^2 / sigma^2,
    from the Taylor series of exp(x^2) erf(x) integrated term by term.
    """
    r2 = theta * r * r / sigma**2
    total, odd_factorial, n = 0.0, 1.0, 0
    while True:
        odd_factorial *= 2 * n + 1
        term = 2.0**n * r2 ** (n + 1) / (odd_factorial * (2 * n + 2))
        total += term
        if n > 5 and term < 1e-18 * total:
            return 2 / theta * total
        n += 1


@pytest.mark.parametrize("sigma,r", [(1.0, 1.0), (1.3, 0.7), (0.2, 5.0)])
def test_brownian_exit_from_symmetric_interval(sigma, r):
    t = th.mean_exit_time(lambda x: 0 * x, lambda x: sigma**2 / 2 + 0 * x, 0.0, r, left=0.0)
    assert t == pytest.approx(r**2 / sigma**2, rel=1e-10)


@pytest.mark.parametrize("x0", [0.0, 0.3, -0.6])
def test_brownian_exit_from_any_start(x0):
    # on (-1, 1): T(x0) = (1 - x0^2)/sigma^2; use the symmetric image |x0| with left = 0
    t = th.mean_exit_time(lambda x: 0 * x, lambda x: 0.5 + 0 * x, abs(x0), 1.0, left=0.0)
    assert t == pytest.approx(1 - x0**2, rel=1e-10)


@pytest.mark.parametrize("theta,sigma,r", [(1.0, 1.0, 1.0), (2.0, 0.8, 2.0), (3.0, 0.5, 1.5)])
def test_ornstein_uhlenbeck_exit_matches_series(theta, sigma, r):
    t = th.mean_exit_time(lambda x: -theta * x, lambda x: sigma**2 / 2 + 0 * x, 0.0, r, 0.0)
    assert t == pytest.approx(ou_exit_series(theta, sigma, r), rel=1e-6)


def test_ornstein_uhlenbeck_from_off_centre_start_matches_bvp():
    """T'' D + mu T' = -1, T'(0) = 0, T(r) = 0 solved by scipy's collocation BVP solver."""
    theta, sigma, r, x0 = 1.5, 1.0, 1.2, 0.5
    d = sigma**2 / 2

    def rhs(x, y):  # y = (T, T')
        return np.vstack([y[1], (-1 + theta * x * y[1]) / d])

    x = np.linspace(0, r, 401)
    sol = integrate.solve_bvp(rhs, lambda ya, yb: np.array([ya[1], yb[0]]), x,
                              np.zeros((2, x.size)), tol=1e-10, max_nodes=200000)
    assert sol.success
    t = th.mean_exit_time(lambda x: -theta * x, lambda x: d + 0 * x, x0, r, 0.0)
    assert t == pytest.approx(float(sol.sol(x0)[0]), rel=1e-6)


def test_left_at_minus_infinity_halves_the_rate_for_a_high_barrier():
    # one absorbing side instead of two: about twice the symmetric exit time
    sym = th.mean_exit_time(lambda x: -2 * x, lambda x: 0.32 + 0 * x, 0.0, 2.0, 0.0)
    one = th.mean_exit_time(lambda x: -2 * x, lambda x: 0.32 + 0 * x, 0.0, 2.0)
    assert one / sym == pytest.approx(2.0, rel=1e-3)


@pytest.mark.parametrize("ratio", [15, 25, 40, 60])
def test_kramers_formula_within_one_percent_beyond_the_saddle(ratio):
    h_min, h_saddle, barrier, lr, b = 2.0, 1.0, 1.0, 0.1, 1
    temperature = barrier / ratio
    sigma2 = 2 * b * temperature / lr
    exact = th.kramers_exit_time(h_min, h_saddle, barrier, lr=lr, batch_size=b,
                                 noise="langevin", sigma2=sigma2)
    formula = th.langevin_escape_time(h_min, h_saddle, barrier, lr=lr, batch_size=b, sigma2=sigma2)
    assert math.isfinite(exact) and exact > 0
    assert exact == pytest.approx(formula, rel=0.01)
    to_saddle = th.kramers_exit_time(h_min, h_saddle, barrier, lr=lr, batch_size=b,
                                     noise="langevin", sigma2=sigma2, to="saddle")
    assert to_saddle / exact == pytest.approx(0.5, abs=0.01)


@pytest.mark.parametrize("kappa,tol", [(5, 0.10), (6, 0.10), (11, 0.10), (40, 0.02), (41, 0.02),
                                       (200, 0.02), (1000, 0.02)])
def test_pld_formula_accuracy_against_exact(kappa, tol):
    h, lr, b, barrier = 1.0, 0.1, 1, 0.5
    sigma_h = b * h / (lr * (kappa - 1))
    args = dict(lr=lr, batch_size=b, sigma_g=h, sigma_h=sigma_h)
    exact = th.kramers_exit_time(h, h, barrier, noise="pld_loss", log=True, **args)
    formula = th.pld_escape_time(h, h, barrier, log=True, **args)
    rel = math.exp(formula - exact) - 1
    assert 0 <= rel < tol  # the formula sits slightly above the exact value


def test_exact_time_survives_psi_spanning_600_orders_of_magnitude():
    # kappa = 1000, q = 3: T ~ 4^999.5 ~ 1e602; only the log is representable
    h, lr, b, barrier, kappa, q = 2.0, 0.1, 1, 1.0, 1000, 3.0
    sigma_h = b * h / (lr * (kappa - 1))
    sigma_g = 2 * sigma_h * barrier / (h * q)
    args = dict(lr=lr, batch_size=b, sigma_g=sigma_g, sigma_h=sigma_h)
    log_t = th.kramers_exit_time(h, h, barrier, noise="pld_loss", log=True, **args)
    assert log_t / math.log(10) == pytest.approx(602.26, abs=0.01)
    assert log_t == pytest.approx(th.pld_escape_time(h, h, barrier, log=True, **args), abs=0.02)
    with pytest.raises(OverflowError, match="log"):
        th.kramers_exit_time(h, h, barrier, noise="pld_loss", **args)


@pytest.mark.parametrize("diffusion, x0", [(1e-4, 0.9), (1e-4, 0.95), (2e-4, 0.9), (1e-5, 2.0)])
def test_weak_noise_exit_far_from_the_minimum_with_the_left_at_minus_infinity(diffusion, x0):
    """OU (drift -x, constant D) from x0 to x0 + 0.1, the minimum 0 far left of the start in
    noise widths: its mass lies in the geometric left tail, which once kept 4 panels per
    doubling however far the rest was refined (-1% at log T = 5000, and 'did not converge' at
    D = 1e-5). Reference: the inner integral in closed form (log Phi), the outer by quad."""
    r = x0 + 0.1
    s = math.sqrt(1 / diffusion)

    def log_inner(y):  # log of exp(y^2 / 2D) / D * int_{-inf}^y exp(-z^2 / 2D) dz
        return y * y / (2 * diffusion) + special.log_ndtr(y * s) + math.log(
            math.sqrt(2 * math.pi * diffusion) / diffusion)

    top = log_inner(r)
    outer = integrate.quad(lambda y: math.exp(log_inner(y) - top), x0, r, epsabs=0,
                           epsrel=1e-12, limit=500)[0]
    exact = top + math.log(outer)
    got = th.log_mean_exit_time(lambda x: -x, lambda x: diffusion + 0 * x, x0, r)
    assert got == pytest.approx(exact, abs=1e-9), (got, exact)


@pytest.mark.parametrize("kappa", [1.05, 1.5, 2.0, 3.0, 11.0])
def test_heavy_tailed_pld_exit_time_against_its_student_t_inner_integral(kappa):
    """PLD (local form) in a quadratic well: D(x) = lr (sigma_g + sigma_H x^2) / (2b), so
    exp(-phi) / D is a Student-t density up to a constant (nu = 2 kappa + 1 with kappa =
    b h / (lr sigma_H)): the inner integral over (-inf, y] is its CDF, and only the outer one
    needs quad. The left tail at -inf decays only polynomially here (like |z|^-(2 kappa + 2))."""
    h, lr, b, sg, r = 1.0, 0.1, 1, 1.0, 1.5
    sh = b * h / (lr * kappa)
    nu, s = 2 * kappa + 1, math.sqrt(sg / (sh * (2 * kappa + 1)))

    def log_inner(y):  # log of exp(phi(y)) * int_{-inf}^y exp(-phi(z)) / D(z) dz, phi(0) = 0
        c = sg ** -(kappa + 1) * s * math.sqrt(nu) * special.beta(0.5, nu / 2)
        return (kappa * math.log(1 + sh * y * y / sg) + math.log(2 * b / lr * c)
                + stats.t.logcdf(y / s, nu) + kappa * math.log(sg))

    top = max(log_inner(y) for y in np.linspace(0, r, 101))
    outer = integrate.quad(lambda y: math.exp(log_inner(y) - top), 0.0, r, epsabs=0,
                           epsrel=1e-12, limit=200)[0]
    exact = top + math.log(outer)
    got = th.log_mean_exit_time(lambda x: -h * x, lambda x: lr * (sg + sh * x * x) / (2 * b),
                                0.0, r)
    assert got == pytest.approx(exact, abs=1e-9), (got, exact)


@pytest.mark.parametrize("kappa", [1.5, 2.0, 3.0])
def test_heavy_tailed_pld_exit_time_is_finite_and_positive(kappa):
    h, lr, b = 1.0, 0.1, 1
    sigma_h = b * h / (lr * (kappa - 1))
    t = th.kramers_exit_time(h, h, 0.5, lr=lr, batch_size=b, noise="pld_local", sigma_g=1.0,
                             sigma_h=sigma_h)
    assert math.isfinite(t) and t > 0


def test_theory_md_sharp_versus_flat_table():
    expected = {0.49: (2.5e7, 2.8e5), 1.0: (8.7e3, 1.4e5), 1.96: (1.5e2, 7.1e4)}
    for h, (pld, lang) in expected.items():
        p = th.kramers_exit_time(h, h, 0.5, lr=0.1, batch_size=1, noise="pld_loss",
                                 sigma_g=h, sigma_h=h * h)
        g = th.kramers_exit_time(h, h, 0.5, lr=0.1, batch_size=1, noise="langevin", sigma2=1.0)
        assert p == pytest.approx(pld, rel=0.05) and g == pytest.approx(lang, rel=0.05)


@pytest.mark.parametrize("sigma_h", [1e-7, 1e-10, 1e-14])
def test_pld_sigma_h_to_zero_tends_to_kramers_and_the_gaussian(sigma_h):
    """kappa ~ 2e6 .. 2e13: the formulas must not lose their digits to lgamma cancellation."""
    h, barrier, lr, b, sigma_g = 2.0, 1.0, 0.1, 1, 2.0  # T = 0.1, barrier/T = 10
    kr = th.langevin_escape_time(h, h, barrier, lr=lr, batch_size=b, sigma2=sigma_g)
    pld = th.pld_escape_time(h, h, barrier, lr=lr, batch_size=b, sigma_g=sigma_g,
                             sigma_h=sigma_h)
    assert pld == pytest.approx(kr, rel=1e-4)
    # the stationary density tends to the Gibbs one, N(0, T/h)
    temperature = th.langevin_temperature(lr, b, sigma_g)
    gauss = stats.norm(scale=math.sqrt(temperature / h)).pdf
    for x in (0.0, 0.2, 0.5):
        p = th.pld_stationary_density(x, h, lr, b, sigma_g, sigma_h)
        assert p == pytest.approx(gauss(x), rel=1e-4)


def test_mori_et_al_special_case_exponent():
    """Noise proportional to the loss (C = 2 L h / b): tau ∝ (L(saddle)/L(a))^(1/2 + b/(lr h))."""
    h, lr, b, barrier = 1.0, 0.05, 1, 1.0

    def tau(loss_at_min):
        return th.pld_escape_time(h, h, barrier, lr=lr, batch_size=b,
                                  sigma_g=2 * h * loss_at_min, sigma_h=h**2, log=True)

    def exact(loss_at_min):
        return th.kramers_exit_time(h, h, barrier, lr=lr, batch_size=b, noise="pld_loss",
                                    sigma_g=2 * h * loss_at_min, sigma_h=h**2, log=True)

    l1, l2 = 0.1, 0.2
    ratio1, ratio2 = (l1 + barrier) / l1, (l2 + barrier) / l2
    slope = (tau(l1) - tau(l2)) / (math.log(ratio1) - math.log(ratio2))
    assert slope == pytest.approx(0.5 + b / (lr * h), rel=1e-12)  # the formula's algebra
    # and the exact quadrature, which shares nothing with the formula (measured 20.4999999)
    slope = (exact(l1) - exact(l2)) / (math.log(ratio1) - math.log(ratio2))
    assert slope == pytest.approx(0.5 + b / (lr * h), rel=1e-6)


def test_pld_density_is_the_student_t_it_claims_and_integrates_to_one():
    h, lr, b, sg, sh = 1.0, 0.1, 2, 0.5, 3.0
    total, _ = integrate.quad(lambda x: th.pld_stationary_density(x, h, lr, b, sg, sh),
                              -np.inf, np.inf, epsabs=0, epsrel=1e-12)
    assert total == pytest.approx(1.0, rel=1e-9)
    x = np.linspace(-20, 20, 101)
    t = th.pld_student_t(h, lr, b, sg, sh)
    assert np.allclose(th.pld_stationary_density(x, h, lr, b, sg, sh), t.pdf(x), rtol=1e-12)
    kappa = th.pld_kappa(h, lr, b, sh)
    assert t.kwds["df"] == pytest.approx(2 * kappa - 1)
    assert th.pld_tail_index(h, lr, b, sh) == pytest.approx(1 + 2 * b * h / (lr * sh))


def test_gibbs_density_normalised():
    loss = lambda x: 0.25 * np.asarray(x) ** 4 - np.asarray(x) ** 2  # noqa: E731
    p = th.gibbs_density(loss, 0.3)
    total, _ = integrate.quad(p, -np.inf, np.inf, epsrel=1e-10)
    assert total == pytest.approx(1.0, rel=1e-8)
    # for a quadratic loss it is the Gaussian of variance T/h
    g = th.gibbs_density(lambda x: 1.5 * np.asarray(x) ** 2, 0.2)
    assert g(0.3) == pytest.approx(stats.norm(scale=math.sqrt(0.2 / 3.0)).pdf(0.3), rel=1e-8)


def _gibbs_cases():
    x = lambda v: np.asarray(v, float)  # noqa: E731
    two_wells = lambda c: lambda v: np.minimum(x(v) ** 2 / 2, 1e4 * (x(v) - c) ** 2 / 2)  # noqa
    z_two = math.sqrt(2 * math.pi) * (1 + 1e-2)
    return {  # loss, T, keyword arguments, (x, exact density)
        "flat x^4": (lambda v: x(v) ** 4, 1.0, {}, (0.0, 1 / (2 * special.gamma(1.25)))),
        "flat x^6, cold": (lambda v: x(v) ** 6, 1e-2, {},
                           (0.0, 1 / (2 * special.gamma(7 / 6) * 1e-2 ** (1 / 6)))),
        "kink |x|": (lambda v: np.abs(x(v)), 1e-3, {}, (1e-3, 500 * math.exp(-1))),
        "one-sided": (lambda v: x(v), 1.0, {"support": (0.0, np.inf)}, (2.0, math.exp(-2))),
        "narrow well in the right tail": (two_wells(30.0), 1.0, {"points": [30.0]},
                                          (0.0, 1 / z_two)),
        "narrow well in the left tail": (two_wells(-30.0), 1.0, {"points": [-30.0]},
                                         (0.0, 1 / z_two)),
    }


@pytest.mark.parametrize("case", list(_gibbs_cases()))
def test_gibbs_density_of_flat_kinked_one_sided_and_two_well_losses(case):
    """x^4 once gave 'not integrable' (a curvature-based window far too wide), and a point in
    an infinite tail was dropped (1% off)."""
    loss, temperature, kw, (x, exact) = _gibbs_cases()[case]
    assert th.gibbs_density(loss, temperature, **kw)(x) == pytest.approx(exact, rel=1e-8)


def test_gibbs_density_is_zero_off_its_support_and_refuses_a_loss_unbounded_below():
    p = th.gibbs_density(lambda v: np.asarray(v, float), 1.0, support=(0.0, np.inf))
    assert p(-1.0) == 0.0 and p(1.0) == pytest.approx(math.exp(-1), rel=1e-10)
    assert integrate.quad(p, -np.inf, np.inf)[0] == pytest.approx(1.0, rel=1e-8)
    cubic = lambda v: np.asarray(v, float) ** 2 - 1e-3 * np.asarray(v, float) ** 3  # noqa: E731
    for loss, temperature in ((cubic, 1.0), (lambda v: 0.5 * v**2 - 0.01 * v**3, 0.2),
                              (lambda v: -np.asarray(v, float) ** 2, 1.0)):
        with pytest.raises(ValueError, match="not integrable"):
            th.gibbs_density(loss, temperature)
    # the same cubic well on a support that stops before it falls: its local Gibbs density
    well = th.gibbs_density(cubic, 0.05, support=(-np.inf, 300.0))
    assert well(0.0) == pytest.approx(1 / math.sqrt(2 * math.pi * 0.05 / 2), rel=2e-3)


@pytest.mark.parametrize("centre, temperature", [(80.0, 1.0), (10.0, 1e-3), (-3e3, 0.5)])
def test_gibbs_density_of_a_narrow_or_distant_well(centre, temperature):
    """Once 3e101 at the centre (minimum outside the search grid) or 'not integrable' (a peak
    narrower than the quadrature's first nodes)."""
    g = th.gibbs_density(lambda x: 0.5 * (np.asarray(x) - centre) ** 2, temperature)
    gauss = stats.norm(loc=centre, scale=math.sqrt(temperature))
    for dx in (0.0, 0.5, -1.0):
        x = centre + dx * math.sqrt(temperature)
        assert g(x) == pytest.approx(gauss.pdf(x), rel=1e-8)


def test_ergodicity_condition():
    h, b, sh = 1.0, 1, 2.0
    lr_max = th.pld_max_lr(h, b, sh, dim=10)
    assert lr_max == pytest.approx(2 * b * h / (sh * 8))
    assert th.pld_is_normalizable(th.pld_kappa(h, 0.99 * lr_max, b, sh), 10)
    assert not th.pld_is_normalizable(th.pld_kappa(h, 1.01 * lr_max, b, sh), 10)
    assert th.pld_max_lr(h, b, sh, dim=2) == math.inf
    with pytest.raises(ValueError, match="not normalisable"):
        th.check_pld_normalizable(th.pld_kappa(h, 2 * lr_max, b, sh), 10)


@pytest.mark.parametrize(
    "kwargs,name",
    [
        (dict(h_min=-1.0), "h_min"),
        (dict(h_saddle=0.0), "h_saddle"),
        (dict(barrier=-0.5), "barrier"),
        (dict(lr=0.0), "lr"),
        (dict(batch_size=-1), "batch_size"),
        (dict(barrier=float("nan")), "barrier"),
        (dict(sigma2=float("inf")), "sigma2"),
        (dict(noise="brownian"), "noise"),
        (dict(x0=10.0), "x0"),
        (dict(sigma_g=5.0), "sigma_g"),  # not Langevin's: once silently ignored
        (dict(noise="pld_loss", sigma_g=1.0, sigma_h=1.0), "sigma2"),
        (dict(to="saddle", n_lengths=8.0), "n_lengths"),  # once silently ignored
    ],
)
def test_bad_arguments_raise_naming_the_argument(kwargs, name):
    args = dict(h_min=1.0, h_saddle=1.0, barrier=1.0, lr=0.1, batch_size=1, noise="langevin",
                sigma2=1.0)
    args.update(kwargs)
    with pytest.raises(ValueError, match=name):
        th.kramers_exit_time(**args)


def test_start_outside_interval_and_bad_boundaries():
    with pytest.raises(ValueError, match="x0"):
        th.mean_exit_time(lambda x: 0 * x, lambda x: 1 + 0 * x, 2.0, 1.0, 0.0)
    with pytest.raises(ValueError, match="x0"):
        th.mean_exit_time(lambda x: 0 * x, lambda x: 1 + 0 * x, float("nan"), 1.0, 0.0)
    with pytest.raises(ValueError, match="left"):
        th.mean_exit_time(lambda x: 0 * x, lambda x: 1 + 0 * x, 0.0, 1.0, float("nan"))
    with pytest.raises(FloatingPointError):  # negative diffusion is caught, not returned as NaN
        th.mean_exit_time(lambda x: 0 * x, lambda x: -1 + 0 * x, 0.0, 1.0, 0.0)
    with pytest.raises(ValueError, match="not integrable"):  # not confined on the left
        th.mean_exit_time(lambda x: 0 * x, lambda x: 1 + 0 * x, 0.0, 1.0)


def test_helpers_refuse_what_they_cannot_compute():
    ou = (lambda x: -x, lambda x: 0.05 + 0 * x)
    for bad in (0, -3):  # never refined (0 * 2 = 0): once an unconverged value, silently
        with pytest.raises(ValueError, match="n_panels"):
            th.log_mean_exit_time(*ou, 0.0, 1.0, n_panels=bad)
    with pytest.raises(ValueError, match="max_panels"):
        th.log_mean_exit_time(*ou, 0.0, 1.0, max_panels=0)
    for kwargs, name in ((dict(h_min=-2.0), "h_min"), (dict(h_saddle=np.nan), "h_saddle"),
                         (dict(barrier=0.0), "barrier")):
        args = {**dict(h_min=1.0, h_saddle=1.0, barrier=1.0, sigma2=1.0), **kwargs}
        with pytest.raises(ValueError, match=name):
            th.noise_covariance("hessian", **args)
    for kwargs, name in ((dict(sigma_g=-10.0), "sigma_g"), (dict(sigma_g=0.0), "sigma_g"),
                         (dict(barrier=-0.3), "barrier"), (dict(barrier=np.nan), "barrier")):
        args = dict(h_min=1.0, barrier=1.0, lr=0.1, batch_size=1, sigma_g=1.0, sigma_h=1.0)
        args.update(kwargs)
        with pytest.raises(ValueError, match=name):
            th.pld_formula_range(args.pop("h_min"), args.pop("barrier"), **args)
    # Kramers' formula past float64: a clear error, and its log
    with pytest.raises(OverflowError, match="log=True"):
        th.kramers_time(1.0, 1.0, 1000.0, 1.0)
    assert th.kramers_time(1.0, 1.0, 1000.0, 1.0, log=True) == pytest.approx(
        1000.0 + math.log(2 * math.pi))
    # a finite time whose exponential alone would overflow (log T 703.0, exp(715) > 1e308)
    assert math.log(th.kramers_time(1e6, 1e6, 715.0, 1.0)) == pytest.approx(
        715.0 + math.log(2 * math.pi / 1e6), rel=1e-12)
    assert math.log(th.kramers_time(2.0, 3.0, 5.0, 1.0)) == pytest.approx(
        th.kramers_time(2.0, 3.0, 5.0, 1.0, log=True), rel=1e-14)
    assert th.langevin_escape_time(1.0, 1.0, 1.0, lr=0.1, batch_size=1, sigma2=1.0,
                                   log=True) == pytest.approx(
        math.log(th.langevin_escape_time(1.0, 1.0, 1.0, lr=0.1, batch_size=1, sigma2=1.0)))


def test_a_far_start_is_exact_or_refused_never_silently_wrong():
    """T(x0) = T(x0 -> a) + T(a) for x0 < a (continuous paths pass a): the reference. Started
    1e5 well widths away, the panels once missed the well at every count and two wrong answers
    agreed (log T 5.1 for 9.48); a start that far must raise."""
    ou = (lambda x: -x, lambda x: 0.05 + 0 * x)
    for x0 in (-10.0, -100.0):
        # the flank alone converges to 1e-6 (4e-10 of T from -1: 13,100 against 4.6)
        ref = math.log(th.mean_exit_time(*ou, x0, -1.0, rtol=1e-6)
                       + th.mean_exit_time(*ou, -1.0, 1.0))
        for bp in ([0.5], []):
            assert th.log_mean_exit_time(*ou, x0, 1.0, breakpoints=bp) == pytest.approx(
                ref, rel=1e-10)
    for x0, bp in ((-1e5, [0.5]), (-1e8, [0.5]), (-1e5, [-2e5, 0.5]), (-1e8, [-2e5, 0.5]),
                   # a breakpoint far left of a start at the well: its panels held the well
                   (0.0, [-2e5, 0.5]), (-10.0, [-2e5, 0.5])):
        with pytest.raises(FloatingPointError):
            th.log_mean_exit_time(*ou, x0, 1.0, breakpoints=bp)
    with pytest.raises(FloatingPointError):
        th.kramers_exit_time(1, 1, 1, lr=0.1, batch_size=1, noise="langevin", sigma2=1.0,
                             x0=-1e5, log=True)
    # a tilted well at a segment's edge, a far wall or breakpoint on its left: the coarse side
    # held half the well between two nodes and read log T 37.44 for 38.09 (checked only at
    # the sign change of the drift, which lay on the fine side)
    tilted = (lambda x: 0.1 - 50 * x * np.exp(-x ** 2 / 0.08), lambda x: 0.05 + 0 * x)
    assert th.log_mean_exit_time(*tilted, 0.0, 1.0) == pytest.approx(38.0851074310, rel=1e-10)
    for call in (lambda: th.log_mean_exit_time(*tilted, 0.0, 1.0, -1e4),
                 lambda: th.log_mean_exit_time(*tilted, 0.0, 1.0, breakpoints=[-1e4]),
                 lambda: th.log_mean_exit_time(*tilted, -1e4, 1.0, breakpoints=[0.0])):
        with pytest.raises(FloatingPointError):
            call()
    # a flat minimum and a sharp saddle (breakpoints close to the exit) stay computable: the
    # same value with 64 breakpoints spread over the interval
    lang = dict(lr=0.1, batch_size=1, noise="langevin", sigma2=1.0)
    g = th.kramers_geometry(0.01, 100, 1.0)
    ref = th.log_mean_exit_time(
        lambda w: -th.kramers_grad(w, 0.01, 100, 1.0),
        lambda w: 0.1 * 1.0 / 2 + 0 * w, 0.0, g.saddle,
        breakpoints=[g.c, *np.linspace(0, g.saddle, 66)[1:-1]])
    assert th.kramers_exit_time(0.01, 100, 1.0, to="saddle", log=True, **lang) == \
        pytest.approx(ref, rel=1e-12)


@pytest.mark.parametrize("args,kwargs,ref", [
    # PLD-loss with a small sigma_g: past where the clipped loss reaches 0 the diffusion is
    # ~1e-6 and phi climbs steeply to the exit, which carries nothing in T: a resolution check
    # on phi alone refused it (a review's reference, by its own quadrature)
    ((1, 1, 1), dict(lr=0.1, batch_size=1, noise="pld_loss", sigma_g=1e-4, sigma_h=5.0),
     30.4052720180),
    ((1, 1, 1), dict(lr=0.1, batch_size=1, noise="pld_loss", sigma_g=1e-4, sigma_h=2.0),
     60.0245736035),
    # a sharp well and a flat saddle: phi anchored far out on the steep side reached
    # 1e4 log T there, and its round-off stopped convergence (reference: analytic phi)
    ((10, 1e-3, 1), dict(lr=0.1, batch_size=1, noise="langevin", sigma2=0.02, to="saddle"),
     1003.8395295661),
])
def test_exit_times_a_review_checked_independently(args, kwargs, ref):
    assert th.kramers_exit_time(*args, log=True, **kwargs) == pytest.approx(ref, rel=1e-11,
                                                                           abs=1e-9)


def test_a_well_out_in_the_left_tail_is_refused_and_a_jump_in_d_is_fine():
    """A deeper, 0.01-wide well 20 left of the start lies in the geometric tail's coarse
    panels: its nodes are far below the top of T's integrand, so only the check around every
    maximum of phi sees it (the answer without it, 4.465, is the plain OU's; exact 14.88).
    A jump of 3e4 in D at a breakpoint: the integrand jumps by log 3e4 there, which no
    refinement shrinks, so the check leaves D out (closed form 3.7572558055689)."""
    def two_wells(x, k2=1e4, depth=15.0, b=-20.0):
        a, w = -0.5 * x ** 2, -(0.5 * k2 * (x - b) ** 2 - depth)
        top = np.maximum(a, w)
        wa, wb = np.exp(a - top), np.exp(w - top)
        return -(wa * x + wb * k2 * (x - b)) / (wa + wb)
    with pytest.raises(FloatingPointError):
        th.log_mean_exit_time(two_wells, lambda x: 1.0 + 0 * x, 0.0, 3.0)
    jump = th.log_mean_exit_time(lambda x: -x, lambda x: np.where(x < 0, 1.0, 1 / 3e4), 0.0,
                                 3 * math.sqrt(1 / 3e4), breakpoints=[0.0])
    assert jump == pytest.approx(3.7572558055689, rel=1e-12)
    # the same well further out (-77.7, -200): a check that let maxima far below the top go
    # (to answer tilted washboards with left = -inf) returned the plain OU's 4.465 for them
    for b in (-77.7, -200.0):
        with pytest.raises(FloatingPointError):
            th.log_mean_exit_time(lambda x: two_wells(x, k2=1e3, b=b), lambda x: 1.0 + 0 * x,
                                  0.0, 3.0)
    # a tilted washboard: with a finite reflecting left it is exact (the code before 2026-11-27
    # gave the same, 0.46207887504, with left = -inf, which is now refused: its ripples out in
    # the tail cannot be told from an unresolved well)
    ripple = (lambda x: 1.0 + 2 * np.pi * np.sin(2 * np.pi * x), lambda x: 1.0 + 0 * x)
    assert th.log_mean_exit_time(*ripple, 0.0, 1.0, -45.0) == pytest.approx(0.46207887504,
                                                                            rel=1e-10)
    with pytest.raises(FloatingPointError, match="finite reflecting"):
        th.log_mean_exit_time(*ripple, 0.0, 1.0)


def test_asymptotic_formulas_warn_outside_their_range():
    with pytest.warns(RuntimeWarning, match="kappa"):
        th.pld_escape_time(1, 1, 0.5, lr=0.1, batch_size=1, sigma_g=1, sigma_h=5.0)
    # kappa = 41 but q = 0.03: effective barrier (kappa - 1/2) ln(1 + q) = 1.2; the formula
    # is 6.3% below the exact value there, which it says
    h, lr, b, barrier, kappa, q = 4.0, 0.1, 1.0, 0.3, 41.0, 0.03
    sigma_h = b * h / (lr * (kappa - 1))
    args = dict(lr=lr, batch_size=b, sigma_g=2 * sigma_h * barrier / (h * q), sigma_h=sigma_h)
    with pytest.warns(RuntimeWarning, match="effective barrier"):
        formula = th.pld_escape_time(h, h, barrier, **args)
    exact = th.kramers_exit_time(h, h, barrier, noise="pld_loss", **args)
    assert formula / exact - 1 == pytest.approx(-0.063, abs=0.005)
    with warnings.catch_warnings():  # at q = 1 it is within 1% (0.94%) and silent
        warnings.simplefilter("error")
        args["sigma_g"] = 2 * sigma_h * barrier / h
        assert th.pld_escape_time(h, h, barrier, **args) == pytest.approx(
            th.kramers_exit_time(h, h, barrier, noise="pld_loss", **args), rel=0.015)
    for effective, warns in ((3.9, True), (4.1, False)):  # the threshold, both sides
        args["sigma_g"] = 2 * sigma_h * barrier / (h * math.expm1(effective / (kappa - 0.5)))
        assert th.pld_formula_range(h, barrier, **args)[1] == pytest.approx(effective)
        with warnings.catch_warnings(record=True) as caught:
            warnings.simplefilter("always")
            th.pld_escape_time(h, h, barrier, **args)
        assert bool(caught) == warns, (effective, caught)
    with pytest.warns(RuntimeWarning, match="barrier/T"):
        th.kramers_time(1, 1, 0.5, 1.0)
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        th.kramers_time(1, 1, 1.0, 0.05)
