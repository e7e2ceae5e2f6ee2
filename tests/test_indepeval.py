"""The independent evaluation sets (training/indepeval.py): talker segmentation, the narrowband set."""
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


def test_narrowband_set_is_telephone_band_and_mixes_exactly(tmp_path):
    """`python -m training.indepeval --source codec2` (Debian's codec2-examples, fetched by apt-get download): 8 clean
    8 kHz recordings, each mixed once with each noise kind at 8 kHz and resampled to 16 kHz. A set that mixed at
    16 kHz (wideband noise on narrowband speech) or forgot a recording or kind fails here."""
    import csv

    import numpy as np
    import soundfile as sf

    from training.indepeval import CODEC2_CLIPS, KINDS, build
    root = build(tmp_path / "nb", tmp_path / "cache", source="codec2")
    rows = list(csv.DictReader(open(root / "metadata" / "mixture_test_mix_single.csv")))
    assert len(rows) == len(CODEC2_CLIPS) * len(KINDS)
    assert {(r["talker"], r["noise_type"]) for r in rows} == {(f"codec2-{c}", k) for c in CODEC2_CLIPS for k in KINDS}
    for r in rows[:12]:
        mix, s, n = (sf.read(root / r[k], dtype="int16")[0].astype(np.int32)
                     for k in ("mixture_path", "source_1_path", "noise_path"))
        assert np.array_equal(mix, s + n)
        for x in (s, n, mix):  # nothing above the 8 kHz channel's band (4 kHz; the resampler's filter rolls off by
            # 4.5 kHz): measured at most 9e-6 of the power there; wideband white noise puts ~0.4 there
            p = np.abs(np.fft.rfft(x.astype(np.float64))) ** 2
            f = np.fft.rfftfreq(len(x), 1 / 16000)
            assert p[f > 4500].sum() < 1e-4 * p.sum(), r["mixture_ID"]
        snr = 10 * np.log10(np.sum(s.astype(float) ** 2) / np.sum(n.astype(float) ** 2))
        assert -5.5 < snr < 15.5
