"""The synthetic scene generator: shape images and videos with exact per-frame COCO ground truth.

Development only (training, evaluation, tests): the installed package does not carry it. The
package ships what one generated video became (``streamer/assets/sample.mp4`` and its ground
truth, :mod:`streamer.demo`); :mod:`tools.scenes.sample` regenerates them.

- :mod:`tools.scenes.shapes`: one random scene (circles, squares, triangles, stars) per seed;
- :mod:`tools.scenes.video`: moving shapes encoded as H.264, with track ids in the ground truth;
- :mod:`tools.scenes.ground_truth`: the COCO ground-truth dict of generated images.
"""
