"""The probe battery: causal tests of how a report reads (or does not read) its neuron.

`run_battery` (in `runner`) is the library entry; `PROBES` the registry of probes. Each probe
module registers its probes on import; the runner imports every module of this package.
"""

from mechcheck.battery.base import PROBES, BatteryOptions, Probe, ProbeResult, register

__all__ = ["PROBES", "BatteryOptions", "Probe", "ProbeResult", "register"]
