"""Sample presets mirroring the motivating montages (compositions in weight fractions).

Each preset has a background phase that fills every pixel not covered by a
particle, and particle phases with an area fraction, a lognormal radius
distribution (median in nm, sigma) and a minimum number per montage, so rare
phases are rare but present. The compositions include the hard peak overlaps
of these samples: V Kb / Cr Ka (V(C,N) vs the Cr carbides), Cr Kb / Mn Ka (the
carbides vs MnS), S Ka / Mo La (MnS vs Mo in M23C6), Ce M / Cu L (am_aluminum).
"""

from __future__ import annotations

from dataclasses import dataclass, field

__all__ = ["Phase", "Preset", "PRESETS"]


@dataclass(frozen=True)
class Phase:
    name: str
    composition: dict[str, float]
    area_fraction: float = 0.0  # of the montage; 0 for the background phase
    radius_nm: float = 0.0  # median particle radius
    radius_sigma: float = 0.35  # lognormal shape
    min_count: int = 1


@dataclass(frozen=True)
class Preset:
    name: str
    description: str
    background: Phase
    particles: tuple[Phase, ...] = field(default_factory=tuple)
    pixel_size_nm: float = 2.0
    beam_kev: float = 200.0

    @property
    def phases(self) -> tuple[Phase, ...]:
        return (self.background, *self.particles)


PRESETS: dict[str, Preset] = {
    "grade91_replica": Preset(
        name="grade91_replica",
        description="carbon extraction replica of a Grade 91 (9Cr-1Mo-V-Nb) steel, 200 keV STEM",
        background=Phase("carbon film", {"C": 0.97, "O": 0.03}),
        particles=(
            Phase("M23C6", {"Cr": 0.58, "Fe": 0.20, "Mo": 0.14, "C": 0.06, "Mn": 0.02}, 0.08, 45.0, 0.35, 3),
            Phase("V(C,N)", {"V": 0.62, "Nb": 0.10, "Cr": 0.06, "C": 0.12, "N": 0.10}, 0.006, 10.0, 0.35, 3),
            Phase("MnS", {"Mn": 0.60, "S": 0.36, "Fe": 0.04}, 0.01, 60.0, 0.3, 1),
            Phase("Al-Si-Cr oxide", {"Al": 0.22, "Si": 0.15, "Cr": 0.18, "O": 0.45}, 0.01, 25.0, 0.35, 2),
            Phase("Ni-rich", {"Ni": 0.55, "Fe": 0.25, "Cr": 0.12, "Si": 0.05, "Mo": 0.03}, 0.01, 30.0, 0.35, 2),
        ),
    ),
    "am_aluminum": Preset(
        name="am_aluminum",
        description="additively manufactured Al-Cu-Ce alloy, 200 keV STEM",
        background=Phase("Al matrix", {"Al": 0.97, "Cu": 0.02, "Mg": 0.01}),
        particles=(
            Phase("Cu-rich Ce-poor", {"Al": 0.46, "Cu": 0.50, "Ce": 0.04}, 0.10, 35.0, 0.4, 3),
            Phase("aluminium oxide", {"Al": 0.53, "O": 0.47}, 0.02, 15.0, 0.35, 2),
            Phase("Cu-Ce", {"Al": 0.38, "Cu": 0.27, "Ce": 0.35}, 0.06, 50.0, 0.35, 2),
        ),
    ),
}
