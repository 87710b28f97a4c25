from napari_histoexpress.inference.map_store import DenseMapStore


def test_sample_map_is_complete(sample_map) -> None:
    store = DenseMapStore.open(sample_map)
    assert store.status == "complete" and store.genes[0] == "ERBB2"
    assert store.attrs["slide"]["mpp"] > 0
