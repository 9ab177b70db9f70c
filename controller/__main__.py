def main() -> None:
    """Entry point."""


if __name__ == "__main__":
    main()
