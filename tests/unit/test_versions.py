"""Library-version capture: installed distributions by name, missing ones left out."""

from __future__ import annotations

import importlib.metadata

from detstack.versions import library_versions


def test_installed_distributions_report_their_metadata_version_in_the_order_asked():
    versions = library_versions(["pytest", "numpy"])
    assert list(versions) == ["pytest", "numpy"]
    assert versions["numpy"] == importlib.metadata.version("numpy")
    assert versions["pytest"] == importlib.metadata.version("pytest")


def test_a_distribution_that_is_not_installed_is_left_out_not_an_error():
    assert library_versions(["numpy", "detstack-no-such-distribution"]) == {
        "numpy": importlib.metadata.version("numpy")
    }


def test_no_names_give_no_versions():
    assert library_versions([]) == {}
