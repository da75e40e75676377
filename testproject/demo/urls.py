from django.urls import path

from . import views

app_name = "demo"
urlpatterns = [
    path("", views.upload, name="upload"),
    path("photos/<int:pk>/", views.photo, name="photo"),
]
