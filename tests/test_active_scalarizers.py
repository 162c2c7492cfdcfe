"""Scalarizers of the DKL experiment (issue #12) against hand computations, and the 4D-STEM simulator's ground truth."""

from __future__ import annotations

import math
import pickle

import numpy as np
import pytest

from xsi_dask.active import scalarizers as sc
from xsi_dask.errors import ParameterError
from xsi_dask.testing.stem4d import simulate_4dstem

# ----------------------------------------------------------------------------- bands

E5 = np.array([0.5, 1.0, 1.5, 2.0, 2.5])  # keV
S5 = np.arange(10.0).reshape(2, 5)  # two spectra: 0..4 and 5..9 counts


def test_band_integral_and_mean_by_hand():
    # band 1.0-2.0 keV holds the channels at 1.0, 1.5, 2.0 (closed interval): 1+2+3 and 6+7+8
    np.testing.assert_array_equal(sc.band_integral(S5, E5, (1.0, 2.0)), [6.0, 21.0])
    np.testing.assert_array_equal(sc.band_mean(S5, E5, (1.0, 2.0)), [2.0, 7.0])
    # batch dims are kept: (3, 2, channels) -> (3, 2)
    batch = np.stack([S5, 2 * S5, 3 * S5])
    np.testing.assert_array_equal(sc.band_integral(batch, E5, (1.0, 2.0)), [[6, 21], [12, 42], [18, 63]])


def test_ev_and_kev_axes_give_the_same_answer():
    # 10 eV channels from 0; 8.0-8.2 keV is 21 channels whatever the axis' units or the limits' units
    rng = np.random.default_rng(1)
    spectra = rng.poisson(5.0, size=(4, 1000)).astype(float)
    e_kev = 0.01 * np.arange(1000)
    e_ev = 10.0 * np.arange(1000)
    ref = spectra[:, 800:821].sum(axis=1)
    for energy, units in ((e_kev, "keV"), (e_ev, "eV")):
        np.testing.assert_allclose(sc.band_integral(spectra, energy, (8.0, 8.2), units=units, band_units="keV"), ref)
        np.testing.assert_allclose(sc.band_integral(spectra, energy, (8000, 8200), units=units, band_units="eV"), ref)
        np.testing.assert_allclose(sc.band_mean(spectra, energy, (8.0, 8.2), units=units, band_units="keV"), ref / 21)
    # the default band units are the axis' units
    np.testing.assert_allclose(sc.band_integral(spectra, e_ev, (8000, 8200), units="eV"), ref)
    # a calibration's rounding: 0.1 * 7 is 0.7000000000000001 > 0.7, still inside the band 0.3-0.7 keV (5 channels)
    e_cal = 0.1 * np.arange(10)
    assert sc.band_integral(np.ones(10), e_cal, (0.3, 0.7)) == 5.0
    assert sc.band_integral(np.ones(10), 1000 * e_cal, (0.3, 0.7), units="eV", band_units="keV") == 5.0


def _edge_spectrum(energy_ev, amplitude=1e12, exponent=3.0, step=100.0, onset=931.0):
    """A * E^-r (E in eV) plus a step of ``step`` counts from ``onset``: an idealised EELS edge."""
    return amplitude * energy_ev**-exponent + step * (energy_ev >= onset)


def test_power_law_background_recovers_the_step_height():
    e = np.arange(800.0, 1101.0)  # 1 eV channels
    # two spectra: different backgrounds and steps; a noiseless A E^-r is fitted exactly in log-log
    spectra = np.stack([_edge_spectrum(e, 1e12, 3.0, 100.0), _edge_spectrum(e, 5e10, 2.5, 40.0)])
    amp, r = sc.power_law_background(spectra, e, (880, 925), units="eV")
    np.testing.assert_allclose(amp, [1e12, 5e10], rtol=1e-8)
    np.testing.assert_allclose(r, [3.0, 2.5], rtol=1e-10)
    # 931-951 eV is 21 channels above the edge: the background-subtracted integral is 21 x step
    np.testing.assert_allclose(sc.band_integral(spectra, e, (931, 951), units="eV", background=(880, 925)), [2100.0, 840.0])
    np.testing.assert_allclose(sc.band_mean(spectra, e, (931, 951), units="eV", background=(880, 925)), [100.0, 40.0])
    # without the background the band is dominated by it (the hand value of sum A E^-r + 21 step)
    raw = sc.band_integral(spectra[:1], e, (931, 951), units="eV")
    np.testing.assert_allclose(raw, [(1e12 * e[131:152] ** -3.0).sum() + 2100.0])
    # the same on a keV axis, with limits in keV (A changes with the unit, the subtracted counts do not)
    np.testing.assert_allclose(
        sc.band_integral(spectra, e / 1000, (0.931, 0.951), background=(0.880, 0.925)), [2100.0, 840.0], rtol=1e-9
    )
    amp_kev, r_kev = sc.power_law_background(spectra, e / 1000, (0.880, 0.925))
    np.testing.assert_allclose(r_kev, [3.0, 2.5], rtol=1e-10)
    np.testing.assert_allclose(amp_kev, [1e12 * 1000.0**-3.0, 5e10 * 1000.0**-2.5], rtol=1e-8)


def test_power_law_background_refuses_non_positive_counts_and_a_window_after_the_band():
    e = np.arange(800.0, 1101.0)
    spectra = np.stack([_edge_spectrum(e), _edge_spectrum(e)])
    spectra[1, 100] = 0.0  # 900 eV, inside the window
    with pytest.raises(ParameterError, match=r"1 spectra have non-positive counts .* \(first at index \(1,\)\)"):
        sc.band_integral(spectra, e, (931, 951), units="eV", background=(880, 925))
    with pytest.raises(ParameterError, match="must end at or before the band"):
        sc.band_integral(spectra[:1], e, (931, 951), units="eV", background=(900, 940))


def test_band_ratio_by_hand_and_with_background():
    e = np.arange(1.0, 7.0)
    spec = np.arange(1.0, 7.0)  # counts 1..6 at 1..6 keV
    np.testing.assert_allclose(sc.band_ratio(spec, e, (1, 2), (5, 6)), 3.0 / 11.0)
    # L3 and L2 white lines of 100 and 50 counts over 21 channels each above one power law: L3/L2 = 2
    ev = np.arange(800.0, 1101.0)
    lines = 1e12 * ev**-3.0 + 100.0 * ((ev >= 931) & (ev <= 951)) + 50.0 * ((ev >= 1020) & (ev <= 1040))
    np.testing.assert_allclose(sc.band_ratio(lines, ev, (931, 951), (1020, 1040), units="eV", background=(880, 925)), 2.0)
    # a zero denominator gives inf / nan, not an exception
    zero = np.array([[1.0, 0, 0, 0, 0, 0], [0.0, 0, 0, 0, 0, 0]])
    out = sc.band_ratio(zero, e, (1, 2), (5, 6))
    assert np.isinf(out[0]) and np.isnan(out[1])


def test_band_max_and_its_position_by_hand():
    e = np.arange(0.0, 6.0)  # keV
    peak = 10.0 - (e - 2.3) ** 2  # samples 4.71, 8.31, 9.91, 9.51, 6.11, 0.71
    assert sc.band_max(peak, e, (0, 5)) == pytest.approx(9.91)
    assert sc.band_max(peak, e, (3, 5)) == pytest.approx(9.51)  # the band's own maximum
    # the parabola through the top three samples of a parabola is the parabola: vertex 2.3 exactly
    assert sc.band_max_position(peak, e, (0, 5)) == pytest.approx(2.3, abs=1e-12)
    assert sc.band_max_position(peak, e, (0, 5), interpolate=False) == 2.0
    # in eV when asked: limits and position in band_units
    assert sc.band_max_position(peak, e, (0, 5000), band_units="eV") == pytest.approx(2300.0, abs=1e-9)
    # a maximum on the band's edge is not extrapolated
    assert sc.band_max_position(peak, e, (3, 5)) == 3.0
    # batches: one position per spectrum
    two = np.stack([peak, 10.0 - (e - 3.6) ** 2])
    np.testing.assert_allclose(sc.band_max_position(two, e, (0, 5)), [2.3, 3.6], atol=1e-12)


@pytest.mark.parametrize(
    ("band", "match"),
    [
        ((2.0, 1.0), r"\(2, 1\) keV is empty or reversed"),
        ((1.0, 1.0), r"\(1, 1\) keV is empty or reversed"),
        ((1.1, 1.4), r"\(1.1, 1.4\) keV holds no channel centre"),
        ((0.0, 1.0), r"\(0, 1\) keV is outside the energy axis \[0.5, 2.5\] keV"),
        ((2.0, 3.0), r"\(2, 3\) keV is outside the energy axis"),
        ((np.nan, 1.0), "must be finite"),
    ],
)
def test_bad_bands_raise_naming_the_band(band, match):
    with pytest.raises(ParameterError, match=match):
        sc.band_mean(S5, E5, band)


def test_bad_axes_and_units_raise():
    with pytest.raises(ParameterError, match="do not match the energy axis of 4 channels"):
        sc.band_mean(S5, E5[:4], (1, 2))
    with pytest.raises(ParameterError, match="strictly increasing"):
        sc.band_mean(S5, E5[::-1], (1, 2))
    with pytest.raises(ParameterError, match="'MeV' is not an energy unit"):
        sc.band_mean(S5, E5, (1, 2), units="MeV")


def test_abundance_picks_the_endmember():
    a = np.arange(12.0).reshape(2, 2, 3)
    np.testing.assert_array_equal(sc.abundance(a, 1), [[1, 4], [7, 10]])
    np.testing.assert_array_equal(sc.abundance(a, 0, axis=0), a[0])
    for bad in (3, -1, True, 1.0):
        with pytest.raises(ParameterError, match=f"component={bad!r} is not an endmember index of the 3 components"):
            sc.abundance(a, bad)


# ----------------------------------------------------------------------------- 4D-STEM


def test_center_of_mass_by_hand():
    p = np.zeros((3, 3))
    p[0, 2] = 5.0  # one row up, one column right of the centre (1, 1)
    np.testing.assert_allclose(sc.center_of_mass(p), [-1.0, 1.0])
    assert sc.com_x(p) == 1.0 and sc.com_y(p) == -1.0
    assert sc.com_magnitude(p) == pytest.approx(math.sqrt(2))
    assert sc.com_angle(p) == pytest.approx(-math.pi / 4)
    q = np.zeros((3, 3))
    q[0, 0], q[2, 2] = 1.0, 3.0  # weights 1 at -1, 3 at +1 on both axes: (3 - 1) / 4
    np.testing.assert_allclose(sc.center_of_mass(q), [0.5, 0.5])
    np.testing.assert_allclose(sc.center_of_mass(q, origin=(0, 0)), [1.5, 1.5])  # (2 x 3) / 4
    # a batch with an empty pattern: NaN for it, the others unchanged
    out = sc.center_of_mass(np.stack([p, np.zeros((3, 3)), q]))
    np.testing.assert_allclose(out[[0, 2]], [[-1, 1], [0.5, 0.5]])
    assert np.isnan(out[1]).all()
    # an even-sized pattern's centre lies between pixels: (ky - 1) / 2
    r = np.zeros((4, 4))
    r[3, 0] = 1.0
    np.testing.assert_allclose(sc.center_of_mass(r), [1.5, -1.5])


def test_virtual_detectors_by_hand():
    ones = np.ones((5, 5))  # centre (2, 2); distances 0, 1 (x4), sqrt2 (x4), 2 (x4), sqrt5 (x8), sqrt8 (x4)
    assert sc.virtual_bright_field(ones, 1.0) == 5
    assert sc.virtual_bright_field(ones, 1.5) == 9
    assert sc.annular_dark_field(ones, 1.0, 1.5) == 4
    assert sc.annular_dark_field(ones, 1.0, 2.0) == 8
    assert sc.annular_dark_field(ones, 2.0, 10.0) == 12  # clipped by the detector: sqrt5 x8 and sqrt8 x4
    assert sc.virtual_bright_field(ones, 1.0, origin=(0, 0)) == 3
    rng = np.random.default_rng(0)
    p = rng.poisson(3.0, size=(4, 16, 16))
    np.testing.assert_array_equal(
        sc.virtual_bright_field(p, 3.0) + sc.annular_dark_field(p, 3.0, 7.0), sc.virtual_bright_field(p, 7.0)
    )
    with pytest.raises(ParameterError, match="radius=0 must be a positive"):
        sc.virtual_bright_field(ones, 0)
    with pytest.raises(ParameterError, match=r"radii \(3, 2\) px must satisfy 0 <= inner < outer"):
        sc.annular_dark_field(ones, 3, 2)
    with pytest.raises(ParameterError, match="annular detector 3-4 px .* covers no detector pixel"):
        sc.annular_dark_field(ones, 3, 4)
    with pytest.raises(ParameterError, match=r"origin must be a pair \(ky, kx\)"):
        sc.center_of_mass(ones, origin=(1, 2, 3))


# ----------------------------------------------------------------------------- the spec parser

EV = np.arange(800.0, 1101.0)
EELS = np.stack([_edge_spectrum(EV) + 50.0 * ((EV >= 1020) & (EV <= 1040)), _edge_spectrum(EV, 3e11, 2.8, 60.0)])


@pytest.mark.parametrize(
    ("spec", "expected"),
    [
        ("band:931-951", lambda s: sc.band_mean(s, EV, (931, 951), units="eV")),
        ("integral:931-951", lambda s: sc.band_integral(s, EV, (931, 951), units="eV")),
        ("bgband:931-951:bg=880-925", lambda s: [100.0, 60.0]),
        ("band:931-951:bg=880-925", lambda s: [100.0, 60.0]),
        ("bgintegral:931-951:bg=880-925", lambda s: [2100.0, 1260.0]),
        ("integral:0.931-0.951:units=keV:bg=0.880-0.925", lambda s: [2100.0, 1260.0]),
        ("ratio:1020-1040/931-951:bg=880-925", lambda s: [1.5, 1.0]),
        ("ratio:931-951/1020-1040", lambda s: sc.band_ratio(s, EV, (931, 951), (1020, 1040), units="eV")),
        ("max:900-1000", lambda s: sc.band_max(s, EV, (900, 1000), units="eV")),
        ("maxpos:900-1000", lambda s: sc.band_max_position(s, EV, (900, 1000), units="eV")),
        ("maxpos:0.9-1.0:units=keV", lambda s: sc.band_max_position(s, EV, (900, 1000), units="eV") / 1000),
    ],
)
def test_spectral_specs(spec, expected):
    s = sc.parse_scalarizer(spec, energy=EV, units="eV")
    assert s.kind == "spectrum" and s.spec == spec
    np.testing.assert_allclose(s(EELS), expected(EELS), rtol=1e-9)
    np.testing.assert_allclose(pickle.loads(pickle.dumps(s))(EELS), expected(EELS), rtol=1e-9)  # travels to workers


def test_pattern_and_abundance_specs():
    p = np.zeros((2, 5, 5))
    p[0, 1, 4] = 2.0  # c = (-1, 2)
    p[1] += 1.0
    p[1, 2, 2] = 5.0
    cases = {
        "com": [math.hypot(1, 2), 0.0],
        "com-x": [2.0, 0.0],
        "com-y": [-1.0, 0.0],
        "com-angle": [math.atan2(-1, 2), 0.0],
        "com:origin=0,0": [math.hypot(1, 4), math.hypot(2, 2)],
        "vbf:r=1": [0.0, 9.0],  # four 1s and the centre set to 5
        "vbf:r=1:origin=1,4": [2.0, 4.0],
        "adf:1-2": [0.0, 8.0],  # p[0]'s pixel is at sqrt5 > 2; sqrt2 x4 and 2 x4
    }
    for spec, want in cases.items():
        s = sc.parse_scalarizer(spec)
        assert s.kind == "pattern"
        np.testing.assert_allclose(s(p), want, atol=1e-12, err_msg=spec)
    ab = sc.parse_scalarizer("abundance:2", n_components=3)
    assert ab.kind == "abundance"
    np.testing.assert_array_equal(ab(np.arange(6).reshape(2, 3)), [2, 5])


@pytest.mark.parametrize(
    ("spec", "match"),
    [
        ("plasmon:10-20", "unknown name 'plasmon'; known: abundance, adf, band"),
        ("", "non-empty string"),
        ("band:951-931", r"band \(951, 931\) eV is empty or reversed"),
        ("band:931-931", "empty or reversed"),
        ("band:931.2-931.7", "holds no channel centre"),
        ("band:700-750", r"\(700, 750\) eV is outside the energy axis \[800, 1100\] eV"),
        ("band:8.0-8.2", "outside the energy axis"),  # keV numbers on an eV axis
        ("band:8.0to8.2", "'8.0to8.2' is not a range LO-HI"),
        ("band", "takes 1 positional argument"),
        ("ratio:931-951", "a ratio is NUM_LO-NUM_HI/DEN_LO-DEN_HI"),
        ("ratio:931-951/1200-1300", r"\(1200, 1300\) eV is outside"),
        ("bgband:931-951", "needs its background window"),
        ("band:931-951:bg=940-960", "must end at or before the band"),
        ("band:931-951:bg=700-750", r"background window \(700, 750\) eV is outside"),
        ("max:931-951:bg=880-925", "option 'bg' does not apply to 'max'"),
        ("band:931-951:units=MeV", "units='MeV' is not 'eV' or 'keV'"),
        ("band:931-951:units=eV:units=eV", "option 'units' given twice"),
        ("com:1-2", "takes 0 positional argument"),
        ("com:r=3", "option 'r' does not apply to 'com'"),
        ("vbf", "vbf needs its radius"),
        ("vbf:r=-1", "radius r=-1 must be positive"),
        ("vbf:r=big", "r='big' is not a number"),
        ("adf:30-10", "annulus 30-10 px must satisfy"),
        ("com:origin=1", "origin='1' must be KY,KX"),
        ("abundance:x", "endmember 'x' is not an integer"),
        ("abundance:3", r"endmember 3 is not one of the 3 components \(0..2\)"),
        ("abundance:-1", "endmember -1 must be >= 0"),
    ],
)
def test_bad_specs_raise(spec, match):
    with pytest.raises(ParameterError, match=match):
        sc.parse_scalarizer(spec, energy=EV, units="eV", n_components=3)


def test_spectral_spec_needs_an_axis():
    with pytest.raises(ParameterError, match="works on spectra and needs their energy axis"):
        sc.parse_scalarizer("band:1-2")


# ----------------------------------------------------------------------------- the 4D-STEM simulator


@pytest.fixture(scope="module")
def scan():
    return simulate_4dstem((48, 48), (32, 32), disk_radius=6.0, max_shift=1.5, dose=2000.0, seed=3)


def test_simulator_field_follows_its_formula():
    # angle 0: u = x, v = y; at x = 0 a wall (s = 0, q = 1), m(y = 0) = 1: shift = max_shift across (+x)
    sim = simulate_4dstem((8, 8), (24, 24), disk_radius=5.0, max_shift=1.2, period=16.0, angle_deg=0.0, wall_width=1.5, seed=0)
    np.testing.assert_allclose(sim.shift[0, 0], [0.0, 1.2], atol=1e-12)
    # at x = 4 (u = P/4): s = tanh(16 / (2 pi 1.5)); along the stripes (+y) 0.6 s, across 1.2 (1 - s^2) m(y)
    s = math.tanh(16 / (2 * math.pi * 1.5))
    m5 = 0.75 + 0.25 * math.cos(2 * math.pi * 5 / 32)
    np.testing.assert_allclose(sim.shift[5, 4], [0.6 * s, 1.2 * (1 - s * s) * m5], atol=1e-12)
    assert sim.data.shape == (8, 8, 24, 24) and sim.haadf.shape == (8, 8)
    m = 0.75 + 0.25 * np.cos(2 * np.pi * np.arange(8)[:, None] / 32)
    np.testing.assert_allclose(sim.haadf_expected, 500.0 * (1 + 0.2 * sim.domains + 0.5 * (1 - sim.domains**2) * m))


def test_simulator_com_is_the_shift_and_is_recovered_within_noise(scan):
    # noiseless: the CoM of the rendered disk equals the shift up to the edge's sampling
    np.testing.assert_allclose(scan.com, scan.shift, atol=0.05)
    com = sc.center_of_mass(scan.data)
    for i in range(2):
        assert np.corrcoef(com[..., i].ravel(), scan.shift[..., i].ravel())[0, 1] > 0.95
    # Poisson error of a CoM: sqrt(<x^2> / N), <x^2> = R^2 / 4 for a uniform disk: 6 / (2 sqrt(2000)) = 0.067 px
    rms = np.sqrt(np.mean((com - scan.com) ** 2))
    assert rms == pytest.approx(6.0 / (2 * math.sqrt(2000.0)), rel=0.05)
    mag = np.hypot(scan.shift[..., 0], scan.shift[..., 1])
    assert np.corrcoef(sc.com_magnitude(scan.data).ravel(), mag.ravel())[0, 1] > 0.9
    # the HAADF counts are Poisson around their expectation
    z = (scan.haadf - scan.haadf_expected) / np.sqrt(scan.haadf_expected)
    assert abs(z.mean()) < 0.1 and z.std() == pytest.approx(1.0, abs=0.05)


def test_simulator_top_com_is_rare_and_on_the_walls(scan):
    mag = np.hypot(scan.shift[..., 0], scan.shift[..., 1])
    top = mag >= np.quantile(mag, 0.99)
    assert np.all(np.abs(scan.domains[top]) < 0.5)  # on the walls
    assert mag.max() <= 1.5 + 1e-12
    # the HAADF shows the walls: brighter there than the domains' mean
    assert scan.haadf_expected[top].mean() > scan.haadf_expected.mean()


def test_simulator_is_reproducible_by_seed(scan):
    again = simulate_4dstem((48, 48), (32, 32), disk_radius=6.0, max_shift=1.5, dose=2000.0, seed=3)
    np.testing.assert_array_equal(again.data, scan.data)
    np.testing.assert_array_equal(again.haadf, scan.haadf)
    other = simulate_4dstem((48, 48), (32, 32), disk_radius=6.0, max_shift=1.5, dose=2000.0, seed=4)
    assert not np.array_equal(other.data, scan.data)
    np.testing.assert_array_equal(other.shift, scan.shift)  # the truth does not depend on the noise


def test_simulator_refuses_a_disk_that_does_not_fit():
    with pytest.raises(ParameterError, match="does not fit on a 16 x 16 detector"):
        simulate_4dstem((4, 4), (16, 16), disk_radius=6.0, max_shift=1.5)
    with pytest.raises(ParameterError, match="dose=0 must be a positive number"):
        simulate_4dstem((4, 4), (32, 32), dose=0)
    with pytest.raises(ParameterError, match=r"scan_shape=\(4, 0\) must be two integers >= 1"):
        simulate_4dstem((4, 0))
