"""Issue 12's "found earlier and left alone", each shown fixed."""

import numpy as np
import pytest

from loopserve.monitor.profile import ProfileError, build_profile


def test_a_category_code_in_minus_one_to_zero_is_not_missing_in_the_profile_and_zero_live():
    """The live accumulators truncate a code toward zero (-0.5 is category 0); the profile read
    every negative value as missing, so the same data counted differently in the reference and
    in the windows. The profile now reads codes as the accumulators do, and refuses -0.5 as it
    refuses every code that is not an integer."""
    column = np.array([0, 1, 2, 1, 0, -0.5], dtype=np.float32)
    with pytest.raises(ProfileError, match="non-integer codes, e.g. -0.5"):
        build_profile({"c": column}, categorical=["c"])
    # Negative integers and non-finite values stay missing, as live.
    profile = build_profile({"c": np.array([0, 1, 2, 1, -1, -7, np.nan], dtype=np.float32)}, categorical=["c"])
    (feature,) = profile.features
    assert feature.missing == 3 and sorted(feature.categories) == [0, 1, 2]
