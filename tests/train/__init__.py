"""Tests of mechcheck/train/."""
