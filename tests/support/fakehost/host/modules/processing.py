"""modules.processing: the attributes of ``p`` / ``Processed`` RefDrop reads."""


class Processed:
    def __init__(self, p, images_list, comments="", index_of_first_image=0):
        self.images = images_list
        self.comments = comments
        self.index_of_first_image = index_of_first_image
        self.info = ""
