"""rosbag2 writing/reading and `mffseg bag endovis|synth` on generated fixtures."""
import cv2
import numpy as np
import pytest

from mffseg_ros import topics
from mffseg_ros.cli import main
from mffseg_ros.data.bags import (
    BagWriter,
    bag_info,
    camera_info_dict,
    cloud_points,
    image_array,
    read_bag,
)
from mffseg_ros.errors import DataError
from mffseg_ros.evaluation.ground_truth import eye_tips
from mffseg_ros.tools.bag_cli import START_NS, write_endovis_bag

SMALL = (160, 128)  # width, height of the small fixture frames (calibration written for that size)


def calibration_text(width, height):
    """EndoVis-format calibration for a `width` x `height` image (numbers made up for the test)."""
    f = 1050.0 * width / 1280
    return '\n'.join([
        f'Width: {width}                // width of the images in pixels',
        f'Height: {height}              // height of the images in pixels',
        f'Camera-0-F: {f:.2f} {f + 0.3:.2f}    // left camera x,y focal dist in pixels',
        f'Camera-0-C: {width * 0.46:.2f} {height * 0.51:.2f}   // left camera x,y center in pixels',
        'Camera-0-Alpha: 0.00000      // left camera skew',
        'Camera-0-K: -0.002 0.004 0.0002 0.0 0.0   // left camera radial distortion',
        f'Camera-1-F: {f - 0.4:.2f} {f - 0.2:.2f}    // right camera x,y focal dist in pixels',
        f'Camera-1-C: {width * 0.53:.2f} {height * 0.5:.2f}   // right camera x,y center in pixels',
        'Camera-1-Alpha: 0.00000      // right camera skew',
        'Camera-1-K: -0.001 0.003 0.0001 0.0 0.0   // right camera radial distortion',
        'Extrinsic-Omega: 0.0002 -0.0012 0.0001    // left to right camera rotation',
        'Extrinsic-T: -4.35 0.02 -0.03             // left to right camera position',
    ])


def make_endovis_video(root, number=3, frames=2, size=SMALL, calib_size=None, seed=0):
    """An instrument_dataset_N folder in the EndoVis 2017 layout; returns (folder, expected frames)."""
    width, height = size
    rng = np.random.default_rng(seed)
    video = root / f'instrument_dataset_{number}'
    for sub in ('left_frames', 'right_frames', 'ground_truth/Left_Prograsp_Forceps_labels',
                'ground_truth/Right_Large_Needle_Driver_labels'):
        (video / sub).mkdir(parents=True)
    (video / 'camera_calibration.txt').write_text(calibration_text(*(calib_size or size)))
    expected = []
    for i in range(frames):
        name = f'frame{i:03d}.png'
        left = rng.integers(0, 256, (height, width, 3), dtype=np.uint8)
        right = rng.integers(0, 256, (height, width, 3), dtype=np.uint8)
        prograsp = np.zeros((height, width), np.uint8)
        needle = np.zeros((height, width), np.uint8)
        y, x = height // 4 + i, width // 8 + i  # instruments move a little from frame to frame
        prograsp[y:y + 10, x:x + 30] = 10   # shaft
        prograsp[y:y + 10, x + 30:x + 40] = 20  # wrist
        prograsp[y:y + 10, x + 40:x + 50] = 30  # claspers
        needle[height // 2:height // 2 + 8, width // 2:width // 2 + 20] = 10
        needle[height // 2:height // 2 + 8, width // 2 + 20:width // 2 + 26] = 30
        for folder, image in (('left_frames', left), ('right_frames', right)):
            cv2.imwrite(str(video / folder / name), cv2.cvtColor(image, cv2.COLOR_RGB2BGR))
        cv2.imwrite(str(video / 'ground_truth/Left_Prograsp_Forceps_labels' / name), prograsp)
        cv2.imwrite(str(video / 'ground_truth/Right_Large_Needle_Driver_labels' / name), needle)
        parts = np.select([prograsp == 10, prograsp == 20, prograsp == 30, needle == 10, needle == 30],
                          [1, 2, 3, 1, 3], 0).astype(np.uint8)
        types = np.select([prograsp > 0, needle > 0], [2, 3], 0).astype(np.uint8)
        instance = np.select([prograsp > 0, needle > 0], [1, 2], 0).astype(np.uint16)
        expected.append({'left': left, 'right': right, 'parts': parts, 'type': types, 'instance': instance})
    return video, expected


def messages_by_topic(path):
    out = {}
    for topic, stamp, msg in read_bag(path):
        out.setdefault(topic, []).append((stamp, msg))
    return out


@pytest.mark.parametrize('storage', ['mcap', 'sqlite3'])
def test_endovis_round_trip(tmp_path, storage):
    video, expected = make_endovis_video(tmp_path, frames=3)
    out = tmp_path / 'bag'
    assert main(['bag', 'endovis', str(video), str(out), '--no-crop', '--rate', '4',
                 '--storage', storage]) == 0
    assert (out / 'metadata.yaml').is_file()
    info = bag_info(out)
    assert info['storage'] == storage and info['message_count'] == 3 * 7
    assert info['custom_data']['mffseg.dataset'] == 'instrument_dataset_3'
    assert info['topics'][topics.LEFT_IMAGE] == ('sensor_msgs/msg/Image', 3)
    assert info['topics'][topics.RIGHT_INFO] == ('sensor_msgs/msg/CameraInfo', 3)

    msgs = messages_by_topic(out)
    stamps = [START_NS + i * 250_000_000 for i in range(3)]  # 4 Hz
    for topic in (topics.LEFT_IMAGE, topics.RIGHT_IMAGE, topics.LEFT_INFO, topics.RIGHT_INFO,
                  topics.GT_PARTS, topics.GT_TYPE, topics.GT_INSTANCE):
        assert [s for s, _ in msgs[topic]] == stamps, topic
        assert [m.header.stamp.sec * 10**9 + m.header.stamp.nanosec for _, m in msgs[topic]] == stamps
    for i, exp in enumerate(expected):
        left, right = msgs[topics.LEFT_IMAGE][i][1], msgs[topics.RIGHT_IMAGE][i][1]
        assert left.encoding == 'rgb8' and bytes(left.data) == exp['left'].tobytes()
        assert bytes(right.data) == exp['right'].tobytes()
        assert msgs[topics.GT_PARTS][i][1].encoding == 'mono8'
        np.testing.assert_array_equal(image_array(msgs[topics.GT_PARTS][i][1]), exp['parts'])
        np.testing.assert_array_equal(image_array(msgs[topics.GT_TYPE][i][1]), exp['type'])
        np.testing.assert_array_equal(image_array(msgs[topics.GT_INSTANCE][i][1]), exp['instance'])

    # camera_info survives: it is the rectification of the calibration file, and rectified
    # projections of a 3-D point share a row in both eyes.
    from mffseg_ros.data.calibration import load_endovis_calibration
    calib = load_endovis_calibration(video / 'camera_calibration.txt')
    infos = {side: camera_info_dict(msgs[topic][0][1])
             for side, topic in (('left', topics.LEFT_INFO), ('right', topics.RIGHT_INFO))}
    for side, info in infos.items():
        want = calib.camera_info(side)
        assert (info['width'], info['height']) == SMALL
        for key in 'dkrp':
            np.testing.assert_allclose(info[key].ravel(), want[key], rtol=1e-12)
    point = np.array([[0.004, -0.002, 0.07]])
    zero = np.zeros(3)
    raw_l = cv2.projectPoints(point, zero, zero, calib.K_left, calib.D_left)[0]
    raw_r = cv2.projectPoints(point, cv2.Rodrigues(calib.R)[0], calib.T, calib.K_right, calib.D_right)[0]
    rect_l = cv2.undistortPoints(raw_l, infos['left']['k'], infos['left']['d'], R=infos['left']['r'],
                                 P=infos['left']['p']).ravel()
    rect_r = cv2.undistortPoints(raw_r, infos['right']['k'], infos['right']['d'], R=infos['right']['r'],
                                 P=infos['right']['p']).ravel()
    assert rect_l[1] == pytest.approx(rect_r[1], abs=1e-3)
    assert rect_l[0] - rect_r[0] == pytest.approx(
        -infos['right']['p'][0, 3] / (infos['left']['r'] @ point[0])[2], rel=1e-6)  # disparity = f*B/Z


def test_raw_endovis_frames_are_cropped_and_calibration_follows(tmp_path):
    """1920x1080 frames: cropped to 1280x1024 by default; with --no-crop the principal points shift."""
    video, expected = make_endovis_video(tmp_path, frames=1, size=(1920, 1080), calib_size=(1280, 1024))
    cropped, full = tmp_path / 'cropped', tmp_path / 'full'
    write_endovis_bag(video, cropped)
    write_endovis_bag(video, full, crop=False)
    left = next(m for t, _, m in read_bag(cropped, [topics.LEFT_IMAGE]))
    np.testing.assert_array_equal(image_array(left), expected[0]['left'][28:1052, 320:1600])
    parts = next(m for t, _, m in read_bag(cropped, [topics.GT_PARTS]))
    np.testing.assert_array_equal(image_array(parts), expected[0]['parts'][28:1052, 320:1600])
    info_c = camera_info_dict(next(m for _, _, m in read_bag(cropped, [topics.LEFT_INFO])))
    info_f = camera_info_dict(next(m for _, _, m in read_bag(full, [topics.LEFT_INFO])))
    assert (info_c['width'], info_c['height'], info_f['width'], info_f['height']) == (1280, 1024, 1920, 1080)
    np.testing.assert_allclose(info_f['k'][:2, 2] - info_c['k'][:2, 2], [320, 28])
    np.testing.assert_allclose(info_f['p'][:2, 2] - info_c['p'][:2, 2], [320, 28], atol=1e-6)


def test_writer_and_reader_helpers(tmp_path):
    from mffseg_ros.inference.tip_records import TIP_DTYPE
    rgb = np.arange(5 * 7 * 3, dtype=np.uint8).reshape(5, 7, 3)
    mono16 = np.arange(35, dtype=np.uint16).reshape(5, 7) * 1000
    tips = np.zeros(2, TIP_DTYPE)
    tips['x'], tips['instance_id'], tips['type_id'] = [0.01, -0.02], [1, 2], [6, 3]
    with BagWriter(tmp_path / 'b', storage='sqlite3') as bag:
        bag.write_image('/rgb', 5, rgb, 'cam')
        bag.write_image('/mono16', 5, mono16, 'cam')
        bag.write_image('/bgr', 6, rgb[..., ::-1], 'cam', encoding='bgr8')
        bag.write_points('/tips', 7, tips, 'cam')
        bag.write_points('/xyz', 8, [[1, 2, 3]], 'cam')
    got = {t: m for t, _, m in read_bag(tmp_path / 'b')}
    np.testing.assert_array_equal(image_array(got['/rgb']), rgb)
    np.testing.assert_array_equal(image_array(got['/mono16']), mono16)
    assert got['/mono16'].encoding == 'mono16' and got['/bgr'].encoding == 'bgr8'
    cloud = cloud_points(got['/tips'])
    assert cloud.dtype.names == TIP_DTYPE.names
    np.testing.assert_array_equal(cloud['instance_id'], [1, 2])
    np.testing.assert_allclose(cloud['x'], [0.01, -0.02], rtol=1e-6)
    assert cloud_points(got['/xyz'])[0].tolist() == (1.0, 2.0, 3.0)
    assert [t for t, _, _ in read_bag(tmp_path / 'b', ['/xyz', '/rgb'])] == ['/rgb', '/xyz']


def test_error_inside_the_writer_leaves_no_bag(tmp_path):
    out = tmp_path / 'bag'
    with pytest.raises(RuntimeError), BagWriter(out) as bag:
        bag.write_image('/a', 1, np.zeros((4, 4), np.uint8), 'cam')
        raise RuntimeError('boom')
    assert list(tmp_path.iterdir()) == []


def test_existing_output_is_kept_unless_overwrite(tmp_path):
    video, _ = make_endovis_video(tmp_path, frames=1)
    out = tmp_path / 'bag'
    write_endovis_bag(video, out, crop=False)
    with pytest.raises(DataError, match='already exists'):
        write_endovis_bag(video, out, crop=False)
    write_endovis_bag(video, out, crop=False, overwrite=True, rate=2)
    assert bag_info(out)['message_count'] == 7
    write_endovis_bag(make_endovis_video(tmp_path / 'two', frames=2)[0], tmp_path / 'first', crop=False,
                      max_frames=1)
    assert bag_info(tmp_path / 'first')['message_count'] == 7
    with pytest.raises(DataError, match='is not a rosbag2 bag; not overwriting'):
        write_endovis_bag(video, video, crop=False, overwrite=True)
    assert (video / 'left_frames').is_dir()


def bad_inputs(tmp_path):
    """name -> (dataset folder, expected message fragment) for broken EndoVis layouts."""
    cases = {}
    video, _ = make_endovis_video(tmp_path / 'nocalib', frames=1)
    (video / 'camera_calibration.txt').unlink()
    cases['no calibration'] = (video, 'camera_calibration.txt: calibration file not found')
    video, _ = make_endovis_video(tmp_path / 'badcalib', frames=1)
    (video / 'camera_calibration.txt').write_text('%YAML:1.0\nK: [1, 0, 0]\n')
    cases['calibration in another format'] = (video, 'not an EndoVis camera_calibration.txt')
    video, _ = make_endovis_video(tmp_path / 'truncated', frames=2)
    (video / 'right_frames/frame001.png').write_bytes(b'\x89PNG\r\n\x1a\n')
    cases['unreadable right frame'] = (video, 'right_frames/frame001.png: cannot read')
    video, _ = make_endovis_video(tmp_path / 'nogt', frames=1)
    for p in sorted((video / 'ground_truth').rglob('*'), reverse=True):
        p.unlink() if p.is_file() else p.rmdir()
    (video / 'ground_truth').rmdir()
    cases['no ground truth'] = (video, 'ground_truth: ground-truth folder missing')
    cases['missing folder'] = (tmp_path / 'instrument_dataset_9', 'folder not found')
    video, _ = make_endovis_video(tmp_path / 'size', frames=1, calib_size=(1280, 1024))
    cases['calibration for another size'] = (video, 'calibrated for 1280x1024 images, but the frames are 160x128')
    video, _ = make_endovis_video(tmp_path / 'renamed', frames=1)
    cases['not a dataset folder'] = (video.rename(video.parent / 'my_video'), 'instrument_dataset_N')
    return cases


def test_bad_inputs_exit_2_with_the_path_and_leave_nothing(tmp_path, capsys):
    for name, (video, message) in bad_inputs(tmp_path).items():
        out = tmp_path / f'out_{name.replace(" ", "_")}'
        assert main(['bag', 'endovis', str(video), str(out), '--no-crop']) == 2, name
        err = capsys.readouterr().err.strip().splitlines()[-1]  # after the progress bar
        assert err.startswith('mffseg bag: error: ') and message in err, (name, err)
        assert not out.exists(), name
        assert not [p for p in tmp_path.iterdir() if p.name.startswith(f'.{out.name}')], name


def test_default_crop_rejects_frames_of_another_size(tmp_path, capsys):
    video, _ = make_endovis_video(tmp_path, frames=1)
    assert main(['bag', 'endovis', str(video), str(tmp_path / 'out')]) == 2
    assert 'neither a raw EndoVis 2017 frame' in capsys.readouterr().err


def test_reading_a_non_bag_is_a_data_error(tmp_path):
    with pytest.raises(DataError, match='no metadata.yaml'):
        list(read_bag(tmp_path))
    (tmp_path / 'metadata.yaml').write_text('not: a bag\n')
    with pytest.raises(DataError, match='cannot open bag'):
        bag_info(tmp_path)


def test_synth_bag_round_trip(tmp_path):
    from mffseg_ros.data.synth import SceneGenerator, StereoRig
    out = tmp_path / 'synth'
    assert main(['bag', 'synth', str(out), '--frames', '3', '--size', '96x128', '--seed', '5',
                 '--rate', '20', '--storage', 'sqlite3']) == 0
    msgs = messages_by_topic(out)
    stamps = [START_NS + i * 50_000_000 for i in range(3)]
    for topic in (topics.LEFT_IMAGE, topics.RIGHT_IMAGE, topics.LEFT_INFO, topics.RIGHT_INFO, topics.GT_PARTS,
                  topics.GT_TYPE, topics.GT_INSTANCE, topics.GT_RIGHT_PREFIX + '/parts', topics.GT_TIPS):
        assert [s for s, _ in msgs[topic]] == stamps, topic
    generator = SceneGenerator(StereoRig.endovis_like().resized(128, 96), seed=5)
    for i in range(3):
        frame = generator.frame(i)  # deterministic: the same frame again
        np.testing.assert_array_equal(image_array(msgs[topics.LEFT_IMAGE][i][1]), frame.left)
        np.testing.assert_array_equal(image_array(msgs[topics.RIGHT_IMAGE][i][1]), frame.right)
        np.testing.assert_array_equal(image_array(msgs[topics.GT_PARTS][i][1]), frame.labels_left['parts'])
        np.testing.assert_array_equal(image_array(msgs[topics.GT_INSTANCE][i][1]), frame.labels_left['instance'])
        np.testing.assert_array_equal(image_array(msgs[topics.GT_RIGHT_PREFIX + '/type'][i][1]),
                                      frame.labels_right['type'])
        # Ground-truth instruments: the node's tip definition on the true label maps of both eyes.
        truth = cloud_points(msgs[topics.GT_TIPS][i][1])
        visible = eye_tips(frame.labels_left['instance'], frame.labels_left['parts'])
        assert truth['instance_id'].tolist() == sorted(visible) and len(truth) > 0
        np.testing.assert_allclose(np.column_stack([truth['u'], truth['v']]), [visible[k][:2] for k in sorted(visible)])
        info = {t['instance_id']: t for t in frame.tips}
        assert truth['type_id'].tolist() == [info[k]['type_id'] for k in sorted(visible)]
        np.testing.assert_allclose(np.column_stack([truth['ax'], truth['ay'], truth['az']]),
                                   [info[k]['axis'] for k in sorted(visible)], rtol=1e-6)
        # Tips seen by both eyes are triangulated: they project back onto both eyes' tips.
        right = eye_tips(frame.labels_right['instance'], frame.labels_right['parts'])
        for record in truth[truth['score'] == 1]:
            for topic, tips in ((topics.LEFT_INFO, visible), (topics.RIGHT_INFO, right)):
                P = camera_info_dict(msgs[topic][i][1])['p']
                uvw = P @ np.array([record['x'], record['y'], record['z'], 1.0])
                # Two eyes see slightly different clasper pixels: their centroids agree to a pixel, not exactly.
                np.testing.assert_allclose(uvw[:2] / uvw[2], tips[int(record['instance_id'])][:2], atol=1.0)


def test_synth_bad_arguments(tmp_path, capsys):
    assert main(['bag', 'synth', str(tmp_path / 'a'), '--frames', '0']) == 2
    assert '--frames must be at least 1' in capsys.readouterr().err
    assert main(['bag', 'synth', str(tmp_path / 'b'), '--frames', '1', '--rate', '0']) == 2
    assert '--rate must be a positive number' in capsys.readouterr().err
    assert main(['bag', 'synth', str(tmp_path / 'missing' / 'c'), '--frames', '1']) == 2
    assert 'output folder does not exist' in capsys.readouterr().err
    with pytest.raises(SystemExit) as exit_info:
        main(['bag', 'synth', str(tmp_path / 'd'), '--frames', '1', '--size', '64by80'])
    assert exit_info.value.code == 2
    assert list(tmp_path.iterdir()) == []  # nothing half-written
