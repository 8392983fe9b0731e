from twisted.application.service import ServiceMaker

crust = ServiceMaker(
    "crust", "crust.node.tap", "A crust peer node: encrypted P2P connections with NAT traversal", "crust"
)
