"""EndoVis 2017 reader on a generated raw-layout tree: crop, parts, types, instances, Other, warnings."""
import re

import cv2
import numpy as np
import pytest

from mffseg_ros.data.datasets import build_dataset, parse_data_spec
from mffseg_ros.data.endovis import (
    CROP_X,
    CROP_Y,
    EndoVis2017,
    LabelWarning,
    type_from_folder,
)
from mffseg_ros.data.splits import FOLDS, PAPER_SPLIT, fold_videos, split_videos
from mffseg_ros.errors import DataError

# Fixture regions in CROPPED coordinates (y0, y1, x0, x1).
PROGRASP_BOX = (100, 140, 200, 260)
BIPOLAR_BOX = (500, 560, 900, 980)
OTHER_BOX = (800, 860, 100, 200)


def _raw(box):
    y0, y1, x0, x1 = box
    return slice(y0 + CROP_Y, y1 + CROP_Y), slice(x0 + CROP_X, x1 + CROP_X)


def write_video(root, n, frames=2, extra_folder=None, odd_grey=False):
    vdir = root / f'instrument_dataset_{n}'
    for side in ('left_frames', 'right_frames'):
        (vdir / side).mkdir(parents=True)
        for f in range(frames):
            img = np.zeros((1080, 1920, 3), np.uint8)
            img[CROP_Y, CROP_X] = (0, 0, 255)  # BGR red exactly at the crop origin
            img[CROP_Y - 1, CROP_X - 1] = (255, 255, 255)  # outside the crop
            img[CROP_Y + 1023, CROP_X + 1279] = (0, 255, 0) if side == 'left_frames' else (255, 0, 0)
            cv2.imwrite(str(vdir / side / f'frame{f:03d}.png'), img)
    gt = vdir / 'ground_truth'
    folders = {'Left_Prograsp_Forceps_labels': PROGRASP_BOX, 'Maryland_Bipolar_Forceps_labels': BIPOLAR_BOX,
               'Other_labels': OTHER_BOX}
    if extra_folder:
        folders[extra_folder] = (10, 20, 10, 20)
    for name, box in folders.items():
        (gt / name).mkdir(parents=True)
        for f in range(frames):
            m = np.zeros((1080, 1920), np.uint8)
            ys, xs = _raw(box)
            m[ys, xs] = 10                                       # shaft
            m[ys.start:ys.start + 10, xs] = 20                   # wrist rows
            m[ys.start:ys.start + 5, xs] = 30                    # claspers rows
            if odd_grey and name.startswith('Left'):
                m[ys.stop - 2:ys.stop, xs] = 40                  # not a part value
            if odd_grey and name.startswith('Other'):
                m[ys, xs] = 40                                   # Other: any value means type 7
            cv2.imwrite(str(gt / name / f'frame{f:03d}.png'), m)
    (vdir / 'camera_calibration.txt').write_text('Camera-0-F: 1 1 // left camera x,y focal dist in pixels\n')
    return vdir


@pytest.fixture(scope='module')
def endovis_root(tmp_path_factory):
    root = tmp_path_factory.mktemp('endovis17')
    write_video(root, 1)
    write_video(root, 3, frames=1, odd_grey=True, extra_folder='Mystery_Tool_labels')
    return root


def test_crop_and_image(endovis_root):
    ds = EndoVis2017(endovis_root, [1])
    s = ds[0]
    assert s['image'].shape == (1024, 1280, 3) and s['image'].dtype == np.uint8
    assert tuple(s['image'][0, 0]) == (255, 0, 0)          # RGB red at the crop origin
    assert tuple(s['image'][1023, 1279]) == (0, 255, 0)
    assert s['image'].sum() == 255 * 2                      # the white pixel outside was cropped away
    assert tuple(ds.right_image(0)[1023, 1279]) == (0, 0, 255)
    assert s['name'] == 'instrument_dataset_1/frame000.png'
    assert ds.calibration_path(1).is_file()


def test_parts_types_instances_and_other(endovis_root):
    ds = EndoVis2017(endovis_root, [1])
    s = ds[1]
    for key, dtype in (('parts', np.uint8), ('type', np.uint8), ('binary', np.uint8), ('instance', np.uint16)):
        assert s[key].shape == (1024, 1280) and s[key].dtype == dtype
    y0, y1, x0, x1 = PROGRASP_BOX
    assert (s['parts'][y0:y0 + 5, x0:x1] == 3).all()
    assert (s['parts'][y0 + 5:y0 + 10, x0:x1] == 2).all()
    assert (s['parts'][y0 + 10:y1, x0:x1] == 1).all()
    assert (s['type'][y0:y1, x0:x1] == 2).all() and (s['binary'][y0:y1, x0:x1] == 1).all()
    y0, y1, x0, x1 = BIPOLAR_BOX
    assert (s['type'][y0:y1, x0:x1] == 1).all()
    # Other: type 7 but background for binary and parts.
    y0, y1, x0, x1 = OTHER_BOX
    assert (s['type'][y0:y1, x0:x1] == 7).all()
    assert (s['parts'][y0:y1, x0:x1] == 0).all() and (s['binary'][y0:y1, x0:x1] == 0).all()
    # Instance = folder identity (sorted folder names: Left_Prograsp, Maryland_Bipolar, Other).
    assert s['instance'][PROGRASP_BOX[0], PROGRASP_BOX[2]] == 1
    assert s['instance'][BIPOLAR_BOX[0], BIPOLAR_BOX[2]] == 2
    assert s['instance'][OTHER_BOX[0], OTHER_BOX[2]] == 3
    assert s['instance'][0, 0] == 0 and s['parts'][0, 0] == 0 and s['type'][0, 0] == 0
    labelled = (s['binary'] == 1).sum()
    assert labelled == (40 * 60 + 60 * 80)


def test_unknown_folder_and_grey_values_warn_and_ignore(endovis_root):
    with pytest.warns(LabelWarning, match='Mystery_Tool_labels'):
        ds = EndoVis2017(endovis_root, [3])
    with pytest.warns(LabelWarning) as caught:
        s = ds[0]
    messages = [str(w.message) for w in caught]
    assert len(messages) == 1 and re.search(r'Left_Prograsp_Forceps_labels.frame000\.png.*\[40\]', messages[0])
    y0, y1, x0, x1 = OTHER_BOX
    assert (s['type'][y0:y1, x0:x1] == 7).all() and (s['binary'][y0:y1, x0:x1] == 0).all()
    y0, y1, x0, x1 = PROGRASP_BOX
    odd = (slice(y1 - 2, y1), slice(x0, x1))
    assert (s['parts'][odd] == 255).all() and (s['binary'][odd] == 255).all() and (s['type'][odd] == 255).all()
    assert (s['parts'][y0 + 10:y1 - 2, x0:x1] == 1).all()
    assert (s['type'][10:20, 10:20] == 255).all()   # unknown folder: type unknown
    assert (s['parts'][10:15, 10:20] == 3).all() and (s['parts'][15:20, 10:20] == 2).all()  # parts valid


def test_type_from_folder_names():
    assert type_from_folder('Right_Prograsp_Forceps_labels') == 2
    assert type_from_folder('Maryland_Bipolar_Forceps_labels') == 1
    assert type_from_folder('Left_Large_Needle_Driver_labels') == 3
    assert type_from_folder('Vessel_Sealer_labels') == 4
    assert type_from_folder('Grasping_Retractor_labels') == 5
    assert type_from_folder('Monopolar_Curved_Scissors_labels') == 6
    assert type_from_folder('Other_labels') == 7
    assert type_from_folder('Suction_labels') is None


def test_errors_name_the_path(tmp_path, endovis_root):
    with pytest.raises(DataError, match='no instrument_dataset_N'):
        EndoVis2017(tmp_path)
    with pytest.raises(DataError, match='instrument_dataset_5 not found'):
        EndoVis2017(endovis_root, [5])
    vdir = write_video(tmp_path, 2, frames=1)
    cv2.imwrite(str(vdir / 'left_frames' / 'frame000.png'), np.zeros((100, 120, 3), np.uint8))
    with pytest.raises(DataError, match=r'frame000\.png: 120x100'):
        EndoVis2017(tmp_path, [2])[0]


def test_splits():
    assert PAPER_SPLIT['train'] == (1, 2, 3, 4, 5, 6) and PAPER_SPLIT['test'] == (7, 8)
    assert FOLDS == {0: (1, 3), 1: (2, 5), 2: (4, 8), 3: (6, 7)}
    assert fold_videos(2) == ((1, 2, 3, 5, 6, 7), (4, 8))
    assert split_videos('fold1-val') == (2, 5) and split_videos('paper-test') == (7, 8)
    with pytest.raises(DataError):
        split_videos('fold9-val')


def test_data_spec_round_trip(endovis_root):
    spec = parse_data_spec(f'endovis:{endovis_root}?videos=1,3&limit=2')
    assert spec == {'kind': 'endovis', 'root': str(endovis_root), 'videos': [1, 3], 'limit': 2}
    assert parse_data_spec('synth:?frames=64&seed=3') == {'kind': 'synth', 'frames': 64, 'seed': 3}
    with pytest.warns(LabelWarning):
        ds = build_dataset(spec)
    assert len(ds) == 2
    with pytest.warns(LabelWarning):
        assert len(build_dataset(f'endovis:{endovis_root}?split=fold0-val')) == 3
    with pytest.raises(DataError, match='KIND'):
        parse_data_spec('/just/a/path')
    with pytest.raises(DataError, match='unknown option'):
        build_dataset(f'endovis:{endovis_root}?videos=1&colour=red')
