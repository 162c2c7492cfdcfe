"""Element maps and Cliff-Lorimer quantification of EDS spectrum images, with exspy's lines and conventions.

- :func:`element_lines`: the X-ray line per element and its integration and
  background windows on an energy axis (exspy's rules and database);
- :func:`net_intensities`: net line counts of dense spectra (e.g. NMF
  endmembers), exspy's ``get_lines_intensity`` convention;
- :func:`element_maps`: net line intensity maps of a montage, one engine map
  pass (a CSR x dense product per tile);
- :func:`quantify`: weight and atomic percent, Cliff-Lorimer with exspy's
  ``quantification_cliff_lorimer``, lazily per tile for maps;
- :func:`quantify_results`: the same for the endmembers of a results store;
- :func:`read_kfactors`: k-factors from YAML or CSV.

Needs exspy (``pip install xsi-dask[quantify]``).
"""

from ._cliff_lorimer import Absorption, quantify
from ._kfactors import read_kfactors
from ._lines import LineTable, element_lines
from ._maps import element_maps, net_intensities
from ._results import quantify_results

__all__ = ["Absorption", "LineTable", "element_lines", "element_maps", "net_intensities", "quantify", "quantify_results",
           "read_kfactors"]
