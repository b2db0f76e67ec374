import pyro
import pytest

from pyro_lfvi import LFVI, fit, plot_history
from pyro_lfvi.examples import ConjugateNormal


def make_svi():
    problem = ConjugateNormal(num_data=100, batch_size=20)
    elbo = LFVI()
    svi = pyro.infer.SVI(problem.model, problem.guide, pyro.optim.Adam({"lr": 0.01}), elbo)
    return problem, elbo, svi


def test_fit_runs_steps_and_shows_progress(capsys):
    problem, elbo, svi = make_svi()
    seen = []
    losses = fit(svi, problem.data, num_steps=30, callback=lambda s, loss: seen.append(s))
    assert len(losses) == 30 == len(elbo.history) and seen == list(range(30))
    err = capsys.readouterr().err
    assert "LFVI" in err and "disc_acc" in err and "30/30" in err


def test_fit_quiet_and_bad_steps(capsys):
    problem, _, svi = make_svi()
    fit(svi, problem.data, num_steps=2, progress=False)
    assert capsys.readouterr().err == ""
    with pytest.raises(ValueError, match="Expected num_steps to be an integer >= 1, actual 0"):
        fit(svi, problem.data, num_steps=0)


def test_plot_history(tmp_path):
    pytest.importorskip("matplotlib")
    import matplotlib

    matplotlib.use("Agg")
    problem, elbo, svi = make_svi()
    fit(svi, problem.data, num_steps=5, progress=False)
    fig = plot_history(elbo.history)
    assert len(fig.axes) == 3
    assert fig.axes[0].get_title() == "ELBO estimate"
    fig.savefig(tmp_path / "curves.png")
    with pytest.raises(ValueError, match="non-empty training history"):
        plot_history([])
