import json
import subprocess
import urllib.parse
import urllib.request

from tests.conftest import ROOT, cli_env
from tests.pipeline.conftest import make_corpus, running_luigid


def test_build_through_a_running_luigid_reports_progress(tmp_path):
    with running_luigid(tmp_path / "luigid") as port:
        manifest = make_corpus(tmp_path / "c", good=["s1_anger_01", "s2_sadness_01"], bad=False)
        out = subprocess.run(["luigi", "--module", "pipeline", "BuildShards", "--dataset", "mini", "--manifest",
                              str(manifest), "--store", str(tmp_path / "store"), "--scheduler-host", "127.0.0.1",
                              "--scheduler-port", str(port), "--workers", "2"],
                             cwd=ROOT, capture_output=True, text=True, timeout=300, env=cli_env())
        assert out.returncode == 0, out.stderr[-2000:]
        assert "BuildShards mini: 2 clips ok, 0 failed" in out.stdout
        query = urllib.parse.quote(json.dumps({"status": "DONE"}))
        api = f"http://127.0.0.1:{port}/api/task_list"
        done = json.load(urllib.request.urlopen(f"{api}?data={query}", timeout=5))["response"]
        decode = [t for t in done.values() if t["name"] == "Decode"]
        assert len(done) == 12 and decode[0]["progress_percentage"] == 100  # 8 stages + 2 embeddings, PCA, BuildShards
        assert decode[0]["status_message"] == "decode batch 0: 2/2 clips done"
