"""The battery's probes, one module each, named as they register. The runner imports them all."""
