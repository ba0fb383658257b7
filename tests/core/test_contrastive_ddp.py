"""Two gloo processes: gradients of the local-loss + gather-with-grad scheme equal one process's."""

import socket

import pytest
import torch
import torch.multiprocessing as mp
from dist_contrastive import WORLD, _grads, _loss, _model_and_data, _worker


@pytest.mark.parametrize("name", ["clip", "siglip"])
def test_two_process_gradients_equal_global_batch(name):
    image_tower, text_tower, images, texts, ids = _model_and_data()
    _loss(name, image_tower, text_tower, images, texts, ids).backward()
    expected = _grads(image_tower, text_tower)

    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    out = mp.get_context("spawn").Manager().dict()
    mp.start_processes(_worker, args=(port, name, out), nprocs=WORLD, start_method="spawn")
    for rank in range(WORLD):
        torch.testing.assert_close(out[rank], expected, rtol=1e-5, atol=1e-6)
