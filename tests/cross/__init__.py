"""Tests of mechcheck/cross/."""
