"""`in_total` (H2-in and H2-out together): the `W_in` span interchanged at p, the neuron free.

The same edit as `in_bypass` without the pin: the neuron now follows its changed input, so the
information lost is what the report reads from the span directly *plus* through the neuron. Null
and comparison as `in_bypass`.
"""

from __future__ import annotations

from mechcheck.battery.base import register
from mechcheck.battery.probes.in_bypass import InBypass


@register("in_total")
class InTotal(InBypass):
    hypotheses = ("H2_in", "H2_out")
    order = 30
    pinned = False
