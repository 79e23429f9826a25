"""Tests of mechcheck/battery/."""
