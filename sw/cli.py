def main():
    print("vitaccel")
