"""
The C{crust:} endpoint strings (L{crust.endpoints}): any Twisted program can
serve and connect over crust's byte streams, by peer id::

    serverFromString(reactor, "crust:SERVICE[:datadir=PATH]")
    clientFromString(reactor, "crust:PEER_ID:SERVICE[:datadir=PATH][:timeout=SECONDS][:info=PATH]")

crust itself is imported only when such a string is parsed.
"""

from twisted.internet.interfaces import IStreamClientEndpointStringParserWithReactor, IStreamServerEndpointStringParser
from twisted.plugin import IPlugin
from zope.interface import implementer


@implementer(IPlugin, IStreamServerEndpointStringParser)
class CrustServerParser:
    prefix = "crust"

    def parseStreamServer(self, reactor, *args, **kwargs):
        from crust.endpoints import server_from_args

        return server_from_args(reactor, *args, **kwargs)


@implementer(IPlugin, IStreamClientEndpointStringParserWithReactor)
class CrustClientParser:
    prefix = "crust"

    def parseStreamClient(self, reactor, *args, **kwargs):
        from crust.endpoints import client_from_args

        return client_from_args(reactor, *args, **kwargs)


crustServerParser = CrustServerParser()
crustClientParser = CrustClientParser()
