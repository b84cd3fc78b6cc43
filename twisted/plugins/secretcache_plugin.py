from twisted.application.service import ServiceMaker

secretcache = ServiceMaker(
    "secretcache",
    "secretcache.tap",
    "A local HTTP cache for AWS Secrets Manager.",
    "secretcache",
)
