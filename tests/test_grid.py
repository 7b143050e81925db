import torch

from nfit.signals import fit_shape, grid_coords


def test_pixel_centres():
    torch.testing.assert_close(grid_coords((2,))[:, 0], torch.tensor([-0.5, 0.5]))
    c = grid_coords((2, 3))
    assert c.shape == (6, 2)
    torch.testing.assert_close(c[1], torch.tensor([-0.5, 0.0]))  # row 0, column 1: (y, x)
    torch.testing.assert_close(c[5], torch.tensor([0.5, 2 / 3]))


def test_chunks_equal_slices_of_the_whole():
    whole = grid_coords((5, 7, 3))
    for start, stop in [(0, 10), (13, 50), (100, 105)]:
        torch.testing.assert_close(grid_coords((5, 7, 3), start, stop), whole[start:stop])


def test_double_resolution_stays_aligned():
    # the two samples of a 2x grid inside one cell average to that cell's centre
    fine = grid_coords((8,))[:, 0].view(4, 2).mean(dim=1)
    torch.testing.assert_close(fine, grid_coords((4,))[:, 0])


def test_fit_shape_keeps_aspect():
    assert fit_shape((300, 451), 1024) == (681, 1024)
    assert fit_shape((128, 128), 1024) == (1024, 1024)
