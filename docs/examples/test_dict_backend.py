import pytest
from dict_backend import FOLDERS, DictBackend, File

from filespool.testing import SpoolContract


class TestDictBackend(SpoolContract):
    atomic_moves = True  # every move is one step under the lock

    @pytest.fixture
    def backend(self, request):
        yield DictBackend(request.node.nodeid)
        FOLDERS.pop(request.node.nodeid, None)

    def write_directly(self, backend, path, data):
        folder, name = path.split("/", 1)  # "new/sub/inner": no such file in a dict folder
        if "/" not in name:
            FOLDERS[backend.name][folder][name] = File(data)

    def read_directly(self, backend, path):
        folder, name = path.split("/", 1)
        file = FOLDERS.get(backend.name, {}).get(folder, {}).get(name)
        return None if file is None else file.data
