"""Source URIs, sinks and ROI providers: one parser each, errors that name the file/line/field."""

from __future__ import annotations

from pathlib import Path

import cv2
import numpy as np
import pytest

from edge.errors import SignguardError, SourceError
from edge.rois import CentreRoi, CsvRoi, StaticRoi, parse_roi
from edge.sources import csi_pipeline, open_sink, open_source, parse_source

from .helpers import colour_frame, write_video


@pytest.mark.parametrize(
    "uri, kind, location",
    [
        ("0", "camera", "0"),
        ("/dev/video0", "camera", "/dev/video0"),
        ("v4l2:///dev/video1", "camera", "/dev/video1"),
        ("csi://0", "csi", "0"),
        ("csi://1?width=1920&height=1080", "csi", "1"),
        ("rtsp://192.0.2.1:8554/cam", "stream", "rtsp://192.0.2.1:8554/cam"),
        ("https://example.invalid/a.mjpg", "stream", "https://example.invalid/a.mjpg"),
        ("drive.mp4", "video", "drive.mp4"),
        ("file:///tmp/drive.MKV", "video", "/tmp/drive.MKV"),
        ("sign.PNG", "image", "sign.PNG"),
    ],
)
def test_parse_source(uri: str, kind: str, location: str) -> None:
    spec = parse_source(uri)
    assert (spec.kind, spec.location) == (kind, location)


def test_csi_pipeline_is_a_jetson_gstreamer_string() -> None:
    spec = parse_source("csi://1?width=1920&height=1080&framerate=60")
    pipe = csi_pipeline(spec.location, spec.options)
    assert pipe.startswith("nvarguscamerasrc sensor-id=1 ")
    assert "width=1920, height=1080, framerate=60/1" in pipe and pipe.endswith("appsink drop=true max-buffers=1")


def test_unknown_scheme_and_missing_inputs(tmp_path: Path) -> None:
    with pytest.raises(SourceError, match="unknown source scheme 'gopher'"):
        parse_source("gopher://x")
    with pytest.raises(SourceError, match="missing.mp4: no such file"):
        open_source(str(tmp_path / "missing.mp4"))
    with pytest.raises(SourceError, match="no such camera device /dev/video987"):
        open_source("/dev/video987")
    (tmp_path / "empty").mkdir()
    with pytest.raises(SourceError, match="folder holds no images"):
        open_source(str(tmp_path / "empty"))


def test_corrupt_video_names_the_path(tmp_path: Path) -> None:
    p = tmp_path / "corrupt.mp4"
    p.write_bytes(np.random.RandomState(0).bytes(20000))
    with pytest.raises(SourceError) as e:
        open_source(str(p))
    assert str(p) in str(e.value) and "expected a video file" in str(e.value)


def test_corrupt_image_names_the_path(tmp_path: Path) -> None:
    p = tmp_path / "broken.jpg"
    p.write_bytes(b"\xff\xd8 not really a jpeg")
    with pytest.raises(SourceError, match="broken.jpg: not a readable image"):
        open_source(str(p))


def test_video_file_source_yields_every_frame(tmp_path: Path) -> None:
    frames = [colour_frame("red", (10 + i, 10, 20, 20)) for i in range(5)]
    path = write_video(tmp_path / "v.avi", frames)
    with open_source(str(path)) as src:
        got = list(src)
    assert [i for i, _ in got] == [0, 1, 2, 3, 4]
    assert got[0][1].shape == (64, 96, 3) and got[0][1].dtype == np.uint8
    assert src.fps == pytest.approx(10.0)


def test_folder_source_is_sorted(tmp_path: Path) -> None:
    for name, colour in (("b.png", "green"), ("a.png", "red"), ("c.jpg", "blue")):
        cv2.imwrite(str(tmp_path / name), colour_frame(colour, (0, 0, 96, 64)))
    (tmp_path / "notes.txt").write_text("ignored")
    frames = list(open_source(str(tmp_path)))
    assert [i for i, _ in frames] == [0, 1, 2]
    assert frames[0][1][0, 0].tolist() == [0, 0, 255]  # a.png = red, BGR
    assert frames[1][1][0, 0].tolist() == [0, 255, 0]
    single = list(open_source(str(tmp_path / "a.png")))
    assert len(single) == 1 and single[0][1].shape == (64, 96, 3)


def test_video_sink_round_trip(tmp_path: Path) -> None:
    assert open_sink(None) is None
    out = tmp_path / "sub" / "out.mp4"
    sink = open_sink(str(out), fps=12.0)
    for i in range(4):
        sink.write(colour_frame("blue", (i * 5, 5, 20, 20)))
    sink.close()
    cap = cv2.VideoCapture(str(out))
    n = 0
    while cap.read()[0]:
        n += 1
    assert n == 4 and int(cap.get(cv2.CAP_PROP_FRAME_WIDTH)) == 96
    cap.release()


def test_parse_roi_specs(tmp_path: Path) -> None:
    frame = np.zeros((100, 200, 3), np.uint8)
    assert isinstance(parse_roi("center"), CentreRoi) and parse_roi("centre:0.6").fraction == 0.6
    assert CentreRoi(0.5).get(0, frame).box == (75.0, 25.0, 50.0, 50.0)
    r = parse_roi("10,20,30,40")
    assert isinstance(r, StaticRoi) and r.get(7, frame).box == (10.0, 20.0, 30.0, 40.0)
    assert StaticRoi((1, 2, 3, 4)).box == (1.0, 2.0, 3.0, 4.0)
    with pytest.raises(SignguardError, match="not understood"):
        parse_roi("left")
    with pytest.raises(SignguardError, match="positive w, h"):
        parse_roi("1,2,0,4")
    with pytest.raises(SignguardError, match="fraction"):
        parse_roi("center:1.5")
    with pytest.raises(SignguardError, match="ROI CSV not found"):
        parse_roi(str(tmp_path / "boxes.csv"))


def test_csv_roi_reads_boxes_and_labels(tmp_path: Path) -> None:
    p = tmp_path / "boxes.csv"
    p.write_text("frame,x,y,w,h,class_id,class_name\n0,1,2,3,4,2,stopSign\n\n3,5.5,6,7,8,,\n2,1,1,2,2,4,\n")
    r = parse_roi(str(p))
    assert isinstance(r, CsvRoi) and r.has_labels
    assert r.get(0, None).box == (1.0, 2.0, 3.0, 4.0) and r.get(0, None).class_name == "stopSign"
    assert r.get(1, None) is None
    assert r.get(3, None).class_id is None and r.get(3, None).class_name is None
    assert r.get(2, None).class_id == 4
    q = tmp_path / "nolabels.csv"
    q.write_text("frame,x,y,w,h\n0,1,2,3,4\n")
    assert not CsvRoi(q).has_labels


@pytest.mark.parametrize(
    "text, pattern",
    [
        ("frame,x,y,w\n0,1,2,3\n", r"line 1: header lacks column\(s\) \['h'\]"),
        ("frame,x,y,w,h\n0,1,2,3,4\n1,1,two,3,4\n", r"line 3: field 'y' must be a number, got 'two'"),
        ("frame,x,y,w,h\n0.5,1,2,3,4\n", r"line 2: field 'frame' must be an integer"),
        ("frame,x,y,w,h\n0,1,2,3\n", r"line 2: field 'h' must be a number, got ''"),
        ("frame,x,y,w,h\n0,1,2,-3,4\n", r"line 2: fields 'w' and 'h' must be positive"),
        ("frame,x,y,w,h\n0,1,2,3,4\n0,1,2,3,4\n", r"line 3: frame 0 already has a box \(line 2\)"),
        ("frame,x,y,w,h,class_id\n0,1,2,3,4,stop\n", r"line 2: field 'class_id' must be an integer"),
        ("frame,x,y,w,h\n0,1,nan,3,4\n", r"line 2: field 'y' must be finite"),
    ],
)
def test_bad_csv_names_file_line_and_field(tmp_path: Path, text: str, pattern: str) -> None:
    p = tmp_path / "bad.csv"
    p.write_text(text)
    with pytest.raises(SignguardError, match=pattern) as e:
        CsvRoi(p)
    assert str(p) in str(e.value)
