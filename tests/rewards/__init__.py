"""Tests of openrft.rewards (a package, so test module names cannot clash with other folders)."""
