"""The independent evaluation set's talker segmentation (training/indepeval.py)."""
from __future__ import annotations

from training.indepeval import single_talker_segments


def test_single_talker_segments_leave_out_overlap_and_short_stretches():
    rttm = ["SPEAKER r1 1 0.000 4.000 <NA> <NA> A <NA> <NA>",   # A alone 0-3, overlapped by B 3-4
            "SPEAKER r1 1 3.000 4.000 <NA> <NA> B <NA> <NA>",   # B alone 4-7
            "SPEAKER r1 1 7.000 1.000 <NA> <NA> A <NA> <NA>",   # A alone 7-8: 1 s, too short
            "SPEAKER r1 1 8.000 2.000 <NA> <NA> A <NA> <NA>",   # touches the last turn: 7-10 in one stretch
            "SPEAKER r2 1 0.000 1.000 <NA> <NA> B <NA> <NA>",   # another recording: 1 s, too short
            "comment line"]
    segs = single_talker_segments(rttm)
    assert segs["A"] == [("r1", 0.0, 3.0), ("r1", 7.0, 10.0)]
    assert segs["B"] == [("r1", 4.0, 7.0)]
