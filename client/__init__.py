"""The client stage: call the served detector with the seed's base64 DataFrame protocol.

Example:
    >>> from client import DetectionClient, encode_images, revert_predict_to_array
    >>> with DetectionClient("localhost:8001", token="...") as client:     # doctest: +SKIP
    ...     client.wait_until_ready(timeout=60)
    ...     result = client.predict(encode_images(["dog.jpg"]))
    >>> arrays = revert_predict_to_array(result)                           # doctest: +SKIP

Several servers of one repository: ``DetectionClient(["10.0.0.5:8001", "10.0.0.6:8001"])``
spreads requests over the healthy ones and survives losing one (``client.endpoint_stats()``).
"""

import lazy_loader

# Names load on first use, so that `detstack --help` (which imports every package to register
# its subcommands) does not pay for torch, pandas or tritonclient.
__getattr__, __dir__, __all__ = lazy_loader.attach(
    __name__,
    submod_attrs={
        "_client": ["DetectionClient"],
        "_config": ["WIRES", "ClientConfig"],
        "_endpoints": ["EndpointStats"],
        "_resolve": ["resolve_endpoints"],
        "_transport": ["Payload"],
        "codec": [
            "Detections",
            "RowError",
            "decode_frame",
            "encode_images",
            "detection_to_dict",
            "encode_predictions",
            "revert_predict_to_array",
            "row_errors",
        ],
        "predict_folder": ["PredictFolderResult", "predict_to_folder"],
    },
)
