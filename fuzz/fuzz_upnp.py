"""
atheris target: what a UPnP gateway sends (crust.nat.portmap.upnp_igd):
SSDP answers, device descriptions, SOAP responses and faults; the first
byte picks which.
"""

from _target import instrumented, main, selected

with instrumented():
    from crust.nat.portmap.gateway import MalformedResponse
    from crust.nat.portmap.upnp_igd import (IGDNotFound, parse_device_description, parse_soap_fault,
                                            parse_soap_response, parse_ssdp_response)

LOCATION = "http://192.0.2.1:5000/rootDesc.xml"
PARSERS = (
    parse_ssdp_response,
    lambda body: parse_device_description(body, LOCATION),
    lambda body: parse_soap_response(body, "GetExternalIPAddress"),
    lambda body: parse_soap_response(body, "AddPortMapping"),
    parse_soap_fault,
)


def test_one(data: bytes) -> None:
    parse, body = selected(data, PARSERS)
    try:
        parse(body)
    except (MalformedResponse, IGDNotFound):  # XMLRejected is a MalformedResponse
        pass


if __name__ == "__main__":
    main(test_one)
