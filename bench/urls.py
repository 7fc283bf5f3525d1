"""The product's URLs plus the references (bare 200, minimal hand-written ingest, minimal pipeline)."""

from django.urls import path

from bench import refviews
from payshift.urls import urlpatterns as product_urlpatterns

urlpatterns = [
    *product_urlpatterns,
    path("bench/bare/", refviews.bare, name="bench-bare"),
    path("bench/minimal/", refviews.minimal_ingest, name="bench-minimal"),
    path("bench/minimal-pipeline/", refviews.minimal_pipeline, name="bench-minimal-pipeline"),
]
