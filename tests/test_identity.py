import os
import stat

from hypothesis import given
from hypothesis import strategies as st
from twisted.trial.unittest import SynchronousTestCase

from crust.errors import IdentityFileError
from crust.identity import Identity, PeerId

from tests import examples


class PeerIdTests(SynchronousTestCase):
    def test_text_round_trip(self):
        peer = Identity.generate().peer_id
        text = str(peer)
        self.assertEqual(len(text), 52)
        self.assertEqual(text, text.lower())
        self.assertEqual(PeerId.from_text(text), peer)
        self.assertEqual(PeerId.from_text("  " + text.upper() + "\n"), peer)

    def test_bad_text(self):
        good = str(Identity.generate().peer_id)
        for bad in ["", "abc", good[:-1], good + "a", good[:-1] + "1", 42, None]:
            with self.assertRaises(ValueError):
                PeerId.from_text(bad)

    @examples(300)
    @given(st.one_of(
        st.text(max_size=60),
        # a peer id's text, damaged: a character changed, added or taken away, case and spaces changed
        st.builds(lambda raw, at, char, cut: (str(PeerId(raw))[:at] + char + str(PeerId(raw))[at + cut:]),
                  st.binary(min_size=32, max_size=32), st.integers(0, 52), st.characters(), st.integers(0, 1)),
        st.none() | st.integers() | st.binary(max_size=52),
    ))
    def test_any_text(self, text):
        """Any text (or anything else) is a peer id or a ValueError; a peer id's text gives it back."""
        try:
            peer = PeerId.from_text(text)
        except ValueError:
            return
        self.assertEqual(len(peer.raw), 32)
        self.assertEqual(PeerId.from_text(str(peer)), peer)

    def test_bytes_length(self):
        self.assertRaises(ValueError, PeerId, b"x" * 31)
        self.assertRaises(ValueError, PeerId, b"x" * 33)

    def test_order_and_hash(self):
        a, b = PeerId(b"\x01" * 32), PeerId(b"\x02" * 32)
        self.assertLess(a, b)
        self.assertEqual(len({a, PeerId(b"\x01" * 32), b}), 2)


class KeyFileTests(SynchronousTestCase):
    def setUp(self):
        self.dir = self.mktemp()
        os.makedirs(self.dir)
        self.path = os.path.join(self.dir, "identity.key")

    def test_created_with_mode_0600_and_reloaded(self):
        first = Identity.load_or_create(self.path)
        self.assertEqual(stat.S_IMODE(os.stat(self.path).st_mode), 0o600)
        again = Identity.load_or_create(self.path)
        self.assertEqual(first.peer_id, again.peer_id)

    def _write(self, content: bytes, mode=0o600):
        with open(self.path, "wb") as f:
            f.write(content)
        os.chmod(self.path, mode)

    def test_corrupt_file_is_an_error_and_kept(self):
        self._write(b"crust-ed25519-seed-v1 not*base64!!\n")
        e = self.assertRaises(IdentityFileError, Identity.load_or_create, self.path)
        self.assertIn("base64", str(e))
        with open(self.path, "rb") as f:
            self.assertEqual(f.read(), b"crust-ed25519-seed-v1 not*base64!!\n")

    def test_foreign_file_is_an_error(self):
        self._write(b"-----BEGIN OPENSSH PRIVATE KEY-----\nxyz\n")
        e = self.assertRaises(IdentityFileError, Identity.load_or_create, self.path)
        self.assertIn("not a crust identity key file", str(e))

    def test_wrong_length(self):
        self._write(b"crust-ed25519-seed-v1 AAAA\n")
        e = self.assertRaises(IdentityFileError, Identity.load, self.path)
        self.assertIn("expected 32", str(e))

    def test_binary_garbage(self):
        self._write(os.urandom(64) + b"\xff")
        self.assertRaises(IdentityFileError, Identity.load, self.path)

    def test_readable_by_others_refused(self):
        Identity.load_or_create(self.path)
        os.chmod(self.path, 0o644)
        e = self.assertRaises(IdentityFileError, Identity.load, self.path)
        self.assertIn("chmod 600", str(e))
