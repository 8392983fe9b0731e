"""
Byte streams beside a connection's messages: any number of ordered,
flow-controlled streams per connection, each the transport of a Twisted
protocol (L{crust.streams.manager}); the endpoints that give them to any
Twisted program are L{crust.endpoints}.
"""
