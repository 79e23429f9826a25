"""Tests of mechcheck/report/."""
